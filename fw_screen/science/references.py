"""Reference sets: what a file of known materials holds, what it covers, and on which energy scale.

A *reference set* is one loaded source (a file, a folder, an ``mp:CHEMSYS`` query).  It serves novelty with
its structures and hulls with its energy entries, and it says what it covers:

* ``per-system``: complete for the chemical systems it names (a file downloaded with MP's
  ``get_entries_in_chemsys``, an ``mp:CHEMSYS`` query, the elemental references: each element alone);
* ``whole-database``: complete for every chemical system its elements span (the whole Materials Project as
  Matbench Discovery ships it, an Alexandria convex-hull release);
* ``structures-only``: novelty only, no hull (MP-20, Alex-MP-20, a CrystaLLM training table, CIF folders).

Release formats declare their coverage themselves; a plain pymatgen JSON list is read by the convention of
per-system downloads when it spans at most :data:`MAX_SYSTEM_ELEMENTS` elements, and must be declared
(``--covers``) when it spans more.  Every set also states its *energy scale* (``mp2020``: MP's GGA/GGA+U
energies with MP2020 corrections, the scale the ML stage puts its energies on); a hull only ever combines
entries of one scale.

Accepted sources (format recognised from the content, not the name):

======================================  ==========================  ==================================
source                                  format                      covers (declared)
======================================  ==========================  ==================================
pymatgen JSON list / mapping of         ``pymatgen-json``           per-system if <= 8 elements (or
(Computed)(Structure)Entries                                        all elemental), else declare it
Matbench Discovery MP entries           ``mbd-mp-entries``          whole-database, mp2020
(pandas JSON, ``entry`` column)
Matbench Discovery PatchedPhaseDiagram  ``mbd-ppd-pickle``          whole-database (``--trust-pickle``)
(``.pkl[.gz]``)
Alexandria convex hull (``.json.bz2``,  ``alexandria-convex-hull``  whole-database, alexandria-pbe
``{"entries": [...]}``)
CSV / parquet with a CIF column (MP-20, ``cif-table``               structures-only
Alex-MP-20, CrystaLLM training tables)
folder of CIFs / one (multi-block) CIF  ``cif-folder`` / ``cif``    structures-only
``mp:CHEMSYS`` (mp-api)                 ``mp-api``                  per-system, mp2020
======================================  ==========================  ==================================

Pure: files in, documents and decisions out; no database here (:mod:`fw_screen.store` stores the documents).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import math
import os
import pickle
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from monty.json import MontyDecoder
from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedEntry

from fw_screen.science.uniqueness import is_ordered_dict

PER_SYSTEM, WHOLE_DATABASE, STRUCTURES_ONLY = "per-system", "whole-database", "structures-only"
COVERS = (PER_SYSTEM, WHOLE_DATABASE, STRUCTURES_ONLY)

#: energy scales a set can be on.  ``mp2020``: Materials Project GGA/GGA+U with MP2020 corrections (what
#: CHGNet predicts and what the ML stage puts every potential's energy on); ``mp-legacy``: MP's 2014
#: correction scheme; ``alexandria-pbe``: Alexandria's PBE energies as released; ``unknown``: stated by
#: nobody.  A hull only combines entries of one scale.
ENERGY_SCALES = ("mp2020", "mp-legacy", "alexandria-pbe", "unknown")

#: a plain file of entries spanning more elements than this is a collection, not one chemical system
#: downloaded whole: it must say what it covers
MAX_SYSTEM_ELEMENTS = 8


class ReferenceSourceError(ValueError):
    """A reference source cannot be read or used (the message names the file and the problem)."""


# ----------------------------------------------------------------------------------------- documents
def chemsys_of(elements: Iterable[str]) -> str:
    return "-".join(sorted(set(elements)))


#: g/cm^3 of one atomic mass unit per cubic Angstrom
AMU_PER_A3_IN_G_PER_CM3 = 1.66053906660


def density_of(composition: Composition, lattice_matrix) -> float | None:
    """Mass density (g/cm^3) of a cell of ``composition`` with ``lattice_matrix`` (what Structure.density
    gives, without building the Structure); None for a degenerate cell."""
    try:
        volume = abs(float(np.linalg.det(np.asarray(lattice_matrix, dtype=float))))
    except (TypeError, ValueError):
        return None
    return float(composition.weight) / volume * AMU_PER_A3_IN_G_PER_CM3 if volume > 0 and math.isfinite(volume) else None


def distribution_fields(composition: Composition, lattice_matrix) -> dict:
    """What a reference document keeps for the metrics' Wasserstein distances: density and number of elements."""
    return {"density": density_of(composition, lattice_matrix), "nelements": len(composition.elements)}


def reference_document(structure: Structure | None, ref_id: str, set_name: str, properties: dict | None = None,
                       structure_dict: dict | None = None, composition: Composition | None = None) -> dict:
    """A novelty reference: one known structure, keyed by reduced formula.

    ``structure_dict`` (with its ``composition``): the structure as the source serialised it, stored as is;
    a whole-database release then loads without building 10^5 Structure objects.
    """
    comp = composition if composition is not None else structure.composition
    return {
        "_id": f"{set_name}:{ref_id}",
        "set": set_name,
        "ref_id": ref_id,
        "formula": comp.formula.replace(" ", ""),
        "reduced_formula": comp.reduced_formula,
        "chemsys": chemsys_of(el.symbol for el in comp.elements),
        "nsites": len(structure_dict["sites"]) if structure_dict is not None else len(structure),
        # partially occupied: matched by ordered approximants when uniqueness.matcher is disordered
        "ordered": is_ordered_dict(structure_dict) if structure_dict is not None else bool(structure.is_ordered),
        **distribution_fields(comp, structure_dict.get("lattice", {}).get("matrix") if structure_dict is not None
                              else structure.lattice.matrix),
        "structure": structure_dict if structure_dict is not None else structure.as_dict(),
        "properties": properties or {},
    }


def entry_document(entry, set_name: str, raw: dict | None = None, structure_elsewhere: bool = False) -> dict:
    """A hull reference, keyed by chemical system.

    What a hull needs is kept flat (``composition``, corrected total ``energy``, ``entry_id``); the whole
    entry (with its structure, for the DFT stage's reference phases) is one JSON string, ``entry_json``, so
    reading a system's entries does not decode nested structure documents (``raw``: the entry dict as the
    source held it, stored as is).  ``structure_elsewhere``: the set's novelty document of the same ``_id``
    holds the structure, so the entry keeps none of its own (``structure_in: "references"``; the store puts
    it back when the whole entry is read) -- a whole release then stores each structure once.
    """
    comp = entry.composition
    elements = sorted(el.symbol for el in comp.elements)
    entry_id = str(entry.entry_id or comp.reduced_formula)
    full = raw if raw is not None else entry.as_dict()
    extra = {}
    if structure_elsewhere and "structure" in full:
        full = {k: v for k, v in full.items() if k != "structure"}
        extra = {"structure_in": "references"}
    return {**extra, "_id": f"{set_name}:{entry_id}", "set": set_name, "entry_id": entry_id, "chemsys": "-".join(elements),
            "elements": elements, "composition": {el.symbol: float(amt) for el, amt in comp.items()},
            "energy": float(entry.energy), "energy_per_atom": float(entry.energy_per_atom),
            "formula": comp.reduced_formula,
            "entry_json": json.dumps(full, default=_json_default)}


def _json_default(obj):
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def entry_dict(doc: dict) -> dict:
    """The full (Computed)(Structure)Entry dict of a stored hull entry (new and older documents)."""
    return json.loads(doc["entry_json"]) if "entry_json" in doc else doc["entry"]


def hull_entry(doc: dict) -> ComputedEntry:
    """The ComputedEntry a hull is built from: the stored composition and corrected energy."""
    if "composition" in doc and "energy" in doc:
        return ComputedEntry(Composition(doc["composition"]), doc["energy"], entry_id=doc.get("entry_id"))
    return ComputedEntry.from_dict(entry_dict(doc))


def item_reference_document(item: "Item", set_name: str) -> dict:
    """The novelty document of a source item that has a structure (decoded or as the source wrote it)."""
    if item.structure_dict is not None:
        return reference_document(None, item.ref_id, set_name, item.properties, structure_dict=item.structure_dict,
                                  composition=item.entry.composition)
    return reference_document(item.structure, item.ref_id, set_name, item.properties)


# ------------------------------------------------------------------------------------ correction schemes
def correction_scheme(entry) -> str | None:
    """The energy-correction scheme an entry's adjustments name: ``MP2020``, ``MP legacy``, another name,
    ``unnamed`` (a correction without named adjustments) or None (no correction: elements, intermetallics)."""
    adjustments = getattr(entry, "energy_adjustments", None) or []
    names = {str(getattr(a, "name", "") or "") for a in adjustments if abs(getattr(a, "value", 0.0)) > 0}
    if not names:
        return "unnamed" if abs(getattr(entry, "correction", 0.0)) > 1e-12 else None
    if all("MP2020" in n for n in names):
        return "MP2020"
    if all(n.startswith("MP ") or n.startswith("MP Gas") for n in names):  # MaterialsProjectCompatibility
        return "MP legacy"
    return ", ".join(sorted(names))


SCHEME_SCALE = {"MP2020": "mp2020", "MP legacy": "mp-legacy"}


# ------------------------------------------------------------------------------------------- sources
@dataclass
class Item:
    """One known material of a source: its entry (hull) and/or structure (novelty)."""

    ref_id: str
    entry: ComputedEntry | None = None
    structure: Structure | None = None
    properties: dict = field(default_factory=dict)
    raw: dict | None = None  # the entry's dict as the source serialised it (stored as is)
    structure_dict: dict | None = None  # the entry's structure, not decoded (fast path of entry dicts)

    @property
    def has_structure(self) -> bool:
        return self.structure is not None or self.structure_dict is not None


@dataclass
class Source:
    """A readable reference source: its format, what the format declares, and its items (read lazily)."""

    path: str
    format: str
    covers: str | None  # declared by the format (None: decided from the content)
    energy_scale: str | None  # declared by the format
    items: Iterator[Item]
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _opener(path: Path):
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open, "gzip"
    if name.endswith(".bz2"):
        return bz2.open, "bzip2"
    if name.endswith(".xz"):
        return lzma.open, "xz"
    return open, None


class _JSONStream:
    """One JSON text read piece by piece: values are parsed one at a time with the standard library's
    ``raw_decode`` (C speed, and Python's own NaN/Infinity tokens, which pymatgen writes for unknown
    uncertainties), so a release of 10^5 entries is never held whole in memory."""

    _WS = re.compile(r"[ \t\n\r]*")
    _DECODER = json.JSONDecoder()

    def __init__(self, fh, chunk: int = 1 << 22):
        self.fh, self.chunk, self.buf, self.pos, self.eof = fh, chunk, "", 0, False

    def _more(self) -> bool:
        data = "" if self.eof else self.fh.read(self.chunk)
        if not data:
            self.eof = True
            return False
        self.buf, self.pos = self.buf[self.pos:] + data, 0
        return True

    def peek(self) -> str:
        while True:
            self.pos = self._WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self._more():
                return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise json.JSONDecodeError(f"expected {' or '.join(repr(x) for x in chars)}, found {c or 'the end'!r}",
                                       self.buf, self.pos)
        self.pos += 1
        return c

    def value(self):
        self.peek()
        while True:
            try:
                obj, end = self._DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self._more():
                    continue
                raise
            if end == len(self.buf) and self._more():  # a number at the end of the buffer may go on
                continue
            self.pos = end
            return obj

    def elements(self) -> Iterator:
        """The values of the array that starts here."""
        self.expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            if self.expect(",]") == "]":
                return

    def members(self) -> Iterator[tuple]:
        """The (key, value) pairs of the object that starts here."""
        for key in self.members_lazy():
            yield key, self.value()

    def members_lazy(self) -> Iterator[str]:
        """The keys of the object that starts here; after each, the caller reads or skips its value."""
        self.expect("{")
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            key = self.value()
            self.expect(":")
            yield key
            if self.expect(",}") == "}":
                return


def _read_errors(path: Path, kind: str | None, exc: Exception) -> ReferenceSourceError:
    if isinstance(exc, (EOFError, OSError, lzma.LZMAError)):
        return ReferenceSourceError(f"{path}: truncated or corrupt {kind or 'file'} ({type(exc).__name__}: {exc}); "
                                    "download it again")
    if isinstance(exc, json.JSONDecodeError):
        what = "decompressed content" if kind else "file"
        return ReferenceSourceError(f"{path}: the {what} is not complete JSON ({exc.msg} at character {exc.pos} of "
                                    "the piece being read): truncated or not a reference file")
    if isinstance(exc, UnicodeDecodeError):
        return ReferenceSourceError(f"{path}: not a text JSON file (binary content after {kind or 'no'} "
                                    "decompression)")
    return ReferenceSourceError(f"{path}: cannot be read ({type(exc).__name__}: {exc})")


#: top-level keys of the pandas JSON tables Matbench Discovery writes (orient "columns")
_MBD_KEYS = ("entry", "material_id", "index")


def _json_shape(path: Path) -> str:
    """The top-level shape of a JSON reference file, read from its beginning: ``list``, ``mbd`` (pandas
    columns with ``entry``), ``alexandria`` (an ``entries`` list), ``object`` (one serialised pymatgen
    object) or ``mapping`` (id -> object)."""
    opener, kind = _opener(path)
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            stream = _JSONStream(fh, chunk=1 << 16)
            first = stream.peek()
            if first == "[":
                return "list"
            if first != "{":
                raise ReferenceSourceError(f"{path}: not a JSON list or mapping of entries (starts with "
                                           f"{first or 'nothing'!r})")
            scalars = set()
            for key in stream.members_lazy():
                c = stream.peek()
                if c not in "[{":
                    stream.value()
                    scalars.add(key)
                    continue
                if "@class" in scalars:
                    return "object"
                if key == "entries" and c == "[":
                    return "alexandria"
                if key in _MBD_KEYS and c == "{":
                    return "mbd"
                return "mapping"
            return "object" if "@class" in scalars else "mapping"
    except ReferenceSourceError:
        raise
    except Exception as exc:
        raise _read_errors(path, kind, exc) from None


def _entries_of(path: Path, shape: str) -> Iterator[tuple]:
    """(key, object) pairs of a JSON reference file of the given shape, streamed; read errors name the file."""
    opener, kind = _opener(path)
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            stream = _JSONStream(fh)
            if shape == "list":
                yield from enumerate(stream.elements())
            elif shape == "mapping":
                yield from stream.members()
            elif shape == "object":
                yield 0, stream.value()
            else:
                wanted = "entries" if shape == "alexandria" else "entry"
                for key in stream.members_lazy():
                    if key != wanted:
                        stream.value()
                        continue
                    if shape == "alexandria":
                        yield from enumerate(stream.elements())
                    else:
                        yield from stream.members()
                    return
    except ReferenceSourceError:
        raise
    except Exception as exc:
        raise _read_errors(path, kind, exc) from None


def _decode_entry(obj, where: str):
    """A pymatgen object from a serialised dict, with a clear error for entries that cannot be one."""
    if not isinstance(obj, dict):
        return obj
    if "@class" not in obj:
        if "lattice" in obj and "sites" in obj:
            return Structure.from_dict(obj)
        if "energy" in obj and "composition" in obj or "structure" in obj and "energy" in obj:
            obj = {"@module": "pymatgen.entries.computed_entries",
                   "@class": "ComputedStructureEntry" if "structure" in obj else "ComputedEntry", **obj}
        else:
            return obj
    cls = obj.get("@class", "")
    if cls.endswith("Entry") and "energy" not in obj:
        raise ReferenceSourceError(f"{where}: a {cls} without an energy ('energy' is missing): cannot serve a hull")
    try:
        decoded = MontyDecoder().process_decoded(obj)
    except Exception as exc:
        raise ReferenceSourceError(f"{where}: cannot be read as a pymatgen {cls or 'object'} "
                                   f"({type(exc).__name__}: {exc})") from None
    if isinstance(decoded, ComputedEntry):
        _check_energy(decoded, where)
    return decoded


def _check_energy(entry: ComputedEntry, where: str) -> None:
    if entry.energy is None or not math.isfinite(entry.energy):
        raise ReferenceSourceError(f"{where}: entry energy is {entry.energy}, not a finite number")


def _fast_entry(obj: dict, where: str) -> ComputedEntry | None:
    """A ComputedStructureEntry dict read as a ComputedEntry without building its Structure (the stored
    composition is the structure's); None when the dict is not of that shape."""
    if not (obj.get("@class") == "ComputedStructureEntry" and isinstance(obj.get("composition"), dict)
            and isinstance(obj.get("structure"), dict) and isinstance(obj["structure"].get("sites"), list)
            and isinstance(obj.get("energy"), (int, float))):
        return None
    try:
        entry = ComputedEntry.from_dict({k: v for k, v in obj.items() if k != "structure"})
    except Exception as exc:
        raise ReferenceSourceError(f"{where}: cannot be read as a ComputedStructureEntry "
                                   f"({type(exc).__name__}: {exc})") from None
    _check_energy(entry, where)
    return entry


def _entry_properties(entry: ComputedEntry, obj) -> dict:
    """What a novelty document keeps of an entry: its energy per atom and the hull data it carries (MP
    files also carry ``e_above_hull`` beside the entry dict)."""
    data = entry.data if isinstance(entry.data, dict) else {}
    props = {k: data[k] for k in ("e_above_hull", "e_form_per_atom", "e_form") if isinstance(data.get(k), (int, float))}
    props["energy_per_atom"] = float(entry.energy_per_atom)
    if isinstance(obj, dict) and isinstance(obj.get("e_above_hull"), (int, float)):
        props["e_above_hull"] = obj["e_above_hull"]
    return props


def _item(obj, ref_id: str, where: str) -> Item:
    fast = _fast_entry(obj, where) if isinstance(obj, dict) else None
    if fast is not None:
        return Item(str(fast.entry_id or ref_id), entry=fast, properties=_entry_properties(fast, obj), raw=obj,
                    structure_dict=obj["structure"])
    decoded = _decode_entry(obj, where)
    if isinstance(decoded, Structure):
        return Item(ref_id, structure=decoded)
    if isinstance(decoded, ComputedEntry):
        return Item(str(decoded.entry_id or ref_id), entry=decoded, structure=getattr(decoded, "structure", None),
                    properties=_entry_properties(decoded, obj),
                    raw=obj if isinstance(obj, dict) and "@class" in obj else None)
    structure = getattr(decoded, "structure", None)
    if isinstance(structure, Structure):
        return Item(ref_id, structure=structure)
    raise ReferenceSourceError(f"{where}: not a pymatgen entry or structure "
                               f"({type(decoded).__name__}{': ' + str(decoded)[:80] if decoded is not None else ''})")


def _json_items(path: Path, shape: str) -> Iterator[Item]:
    for key, obj in _entries_of(path, shape):
        yield _item(obj, f"{default_set_name(path)}-{key}", f"{path}: item {key!r}")


def _mbd_items(path: Path) -> Iterator[Item]:
    """Matbench Discovery's ``*-mp-computed-structure-entries.json.gz``: a pandas DataFrame written with
    ``df.to_json`` (orient "columns"): {"material_id": {row: id}, "entry": {row: entry dict}, ...}.  The
    entries carry their MP id (``entry_id``, what ``material_id`` repeats), so one streamed pass over the
    ``entry`` column suffices."""
    n = 0
    for row, obj in _entries_of(path, "mbd"):
        n += 1
        mid = obj.get("entry_id") if isinstance(obj, dict) else None
        yield _item(obj, str(mid or row), f"{path}: row {row}{f' ({mid})' if mid else ''}")
    if n == 0:
        raise ReferenceSourceError(f"{path}: a pandas JSON table without an 'entry' column of entries")


def _alexandria_items(path: Path) -> Iterator[Item]:
    for i, obj in _entries_of(path, "alexandria"):
        mat_id = (obj.get("data") or {}).get("mat_id") if isinstance(obj, dict) else None
        yield _item(obj, str(mat_id or f"alexandria-{i}"), f"{path}: entry {i}{f' ({mat_id})' if mat_id else ''}")


def _pickle_items(path: Path, trust_pickle: bool) -> tuple[str, Iterator[Item]]:
    if not trust_pickle:
        raise ReferenceSourceError(
            f"{path}: is a Python pickle, and loading a pickle runs code stored in the file. Load it only if you "
            "trust where it came from (e.g. Matbench Discovery's 2023-02-07-ppd-mp.pkl.gz from its figshare "
            "record): pass --trust-pickle (Python: trust_pickle=True).")
    opener, kind = _opener(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with opener(path, "rb") as fh:
                obj = pickle.load(fh)  # noqa: S301 -- the user said they trust this file
    except (EOFError, OSError, lzma.LZMAError, pickle.UnpicklingError) as exc:
        raise ReferenceSourceError(f"{path}: truncated or corrupt {kind + ' ' if kind else ''}pickle "
                                   f"({type(exc).__name__}: {exc})") from None
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise ReferenceSourceError(f"{path}: pickle needs a class this pymatgen does not have "
                                   f"({type(exc).__name__}: {exc})") from None
    entries = getattr(obj, "all_entries", None)
    if entries is None and isinstance(obj, list) and all(isinstance(e, ComputedEntry) for e in obj):
        entries = obj
    if entries is None:
        raise ReferenceSourceError(f"{path}: a pickle of {type(obj).__name__}, not a PatchedPhaseDiagram, "
                                   "PhaseDiagram or list of entries")
    name = type(obj).__name__

    def items():
        for i, e in enumerate(entries):
            if not isinstance(e, ComputedEntry):
                raise ReferenceSourceError(f"{path}: entry {i} of the {name} is a {type(e).__name__} "
                                           "(no correction information): not a ComputedEntry")
            yield _item(e, str(e.entry_id or f"{path.stem}-{i}"), f"{path}: entry {i}")

    return name, items()


def _cif_items(path: Path) -> Iterator[Item]:
    from fw_screen.science.ingest import split_blocks
    from fw_screen.science.validity import parse_structure

    if path.is_dir():
        for f in sorted(path.rglob("*.cif")):
            try:
                yield Item(f.stem, structure=parse_structure(f.read_text(errors="replace")))
            except Exception:
                yield Item(f.stem)  # counted as skipped
        return
    for i, block in enumerate(split_blocks(path.read_text(errors="replace"))):
        try:
            yield Item(f"{path.stem}-{i}", structure=parse_structure(block))
        except Exception:
            yield Item(f"{path.stem}-{i}")


def _table_items(path: Path, ingest: dict) -> Iterator[Item]:
    from fw_screen.science.ingest import IngestError, read_inputs, source_key
    from fw_screen.science.validity import parse_structure

    try:
        raws = list(read_inputs(path, ingest))
    except IngestError as exc:
        raise ReferenceSourceError(f"{path}: {exc}") from None
    counts = Counter(raw.source.get("material_id") for raw in raws)
    for raw in raws:
        mid = raw.source.get("material_id")
        # an id repeated in the table (CrystaLLM-pi reuses them across conditions) is made unique by row
        ref_id = mid if mid and counts[mid] == 1 else (f"{mid}@{source_key(raw.source)}" if mid else
                                                        source_key(raw.source))
        try:
            yield Item(str(ref_id), structure=parse_structure(raw.text))
        except Exception:
            yield Item(str(ref_id))


def open_source(path: str | Path, ingest: dict | None = None, trust_pickle: bool = False) -> Source:
    """The reference source at ``path``, its format recognised from the content (see the module table)."""
    path = Path(path)
    if not path.exists():
        raise ReferenceSourceError(f"reference source not found: {path}")
    lower = path.name.lower()
    if path.is_dir():
        return Source(str(path), "cif-folder", STRUCTURES_ONLY, None, _cif_items(path))
    sha = file_sha256(path)
    if lower.endswith((".pkl", ".pkl.gz", ".pickle", ".pkl.bz2")):
        name, items = _pickle_items(path, trust_pickle)
        return Source(str(path), "mbd-ppd-pickle", WHOLE_DATABASE, None, items, sha,
                      notes=[f"a pickled {name}: every chemical system of its elements is complete"])
    if lower.endswith((".json", ".json.gz", ".json.bz2", ".json.xz")):
        shape = _json_shape(path)
        if shape == "mbd":
            return Source(str(path), "mbd-mp-entries", WHOLE_DATABASE, None, _mbd_items(path), sha)
        if shape == "alexandria":
            return Source(str(path), "alexandria-convex-hull", WHOLE_DATABASE, "alexandria-pbe",
                          _alexandria_items(path), sha)
        return Source(str(path), "pymatgen-json", None, None, _json_items(path, shape), sha)
    if lower.endswith((".csv", ".csv.gz", ".parquet", ".pq")):
        from fw_screen.spec import default_spec

        return Source(str(path), "cif-table", STRUCTURES_ONLY, None,
                      _table_items(path, ingest or default_spec().ingest), sha)
    if lower.endswith(".cif"):
        return Source(str(path), "cif", STRUCTURES_ONLY, None, _cif_items(path), sha)
    raise ReferenceSourceError(
        f"{path}: unknown reference format (pymatgen .json[.gz|.bz2] of entries, Matbench Discovery MP entries "
        ".json.gz or PatchedPhaseDiagram .pkl.gz, Alexandria convex-hull .json.bz2, .csv/.parquet with a CIF "
        "column, .cif, folder of CIFs, mp:CHEMSYS)")


# -------------------------------------------------------------------------------------- what a set covers
@dataclass
class SetSummary:
    """What a source held, gathered while its items stream past: the basis of its coverage and scale."""

    entries: int = 0
    structures: int = 0
    skipped: int = 0  # unreadable items (a CIF that does not parse)
    no_structure: int = 0  # entries without a structure: hulls only, no novelty
    elements: set = field(default_factory=set)
    unary: set = field(default_factory=set)  # elements with an entry of their own
    chemsys: Counter = field(default_factory=Counter)
    schemes: Counter = field(default_factory=Counter)
    scheme_examples: dict = field(default_factory=dict)

    @classmethod
    def from_entry_docs(cls, docs: Iterable[dict]) -> "SetSummary":
        """The summary of stored entry documents (their sorted ``elements``)."""
        summary = cls()
        for d in docs:
            summary.count_entry(d["elements"])
        return summary

    def count_entry(self, elements: list[str]) -> None:
        """One entry of the sorted ``elements``."""
        self.entries += 1
        self.elements.update(elements)
        if len(elements) == 1:
            self.unary.add(elements[0])
        self.chemsys["-".join(elements)] += 1

    def add(self, item: Item) -> None:
        if item.entry is None and not item.has_structure:
            self.skipped += 1
            return
        if item.has_structure:
            self.structures += 1
        if item.entry is not None:
            self.no_structure += not item.has_structure
            self.count_entry(sorted(el.symbol for el in item.entry.composition.elements))
            scheme = correction_scheme(item.entry)
            if scheme is not None:
                self.schemes[scheme] += 1
                self.scheme_examples.setdefault(scheme, item.ref_id)


def plain_systems(summary: SetSummary) -> list[str]:
    """The systems a plain file of entries covers by the convention that such files are downloaded per
    system (MP ``get_entries_in_chemsys``): its elements alone when it holds only elemental entries (each
    element's lowest entry is that element's hull), else the union of its elements when it has their own
    entries and at most :data:`MAX_SYSTEM_ELEMENTS` of them; otherwise none."""
    if not any("-" in s for s in summary.chemsys):
        return sorted(summary.unary)
    return _union_system(summary)


def _union_system(summary: SetSummary) -> list[str]:
    els = sorted(summary.elements)
    if 2 <= len(els) <= MAX_SYSTEM_ELEMENTS and set(els) <= summary.unary:
        return ["-".join(els)]
    return []


def _maximal_systems(summary: SetSummary) -> list[str]:
    """The chemical systems of a multi-system file: those of its entries not inside another's, each with its
    elements' own entries (a file concatenating whole-system downloads)."""
    systems = [set(s.split("-")) for s in summary.chemsys]
    out = []
    for s in systems:
        if len(s) > 1 and not any(s < t for t in systems) and s <= summary.unary:
            out.append(chemsys_of(s))
    return sorted(set(out))


def decide_coverage(summary: SetSummary, source: Source, covers: str | None) -> tuple[str, list[str]]:
    """(covers, systems) of a set: declared by the user, else by the format, else read from the content.

    A plain file spanning more than :data:`MAX_SYSTEM_ELEMENTS` elements with compounds is a collection
    whose coverage cannot be guessed: it must be declared.
    """
    if covers is not None and covers not in COVERS:
        raise ReferenceSourceError(f"--covers {covers!r}: one of {', '.join(COVERS)}")
    covers = covers or source.covers
    if summary.entries == 0:
        if covers in (PER_SYSTEM, WHOLE_DATABASE):
            raise ReferenceSourceError(f"{source.path}: --covers {covers} needs energy entries, and the file has "
                                       f"none ({summary.structures} structures): it can serve novelty only")
        return STRUCTURES_ONLY, []
    if covers == STRUCTURES_ONLY:
        return STRUCTURES_ONLY, []
    if covers == WHOLE_DATABASE:
        return WHOLE_DATABASE, []
    compounds = [s for s in summary.chemsys if "-" in s]
    if covers == PER_SYSTEM:
        systems = _union_system(summary) or _maximal_systems(summary)
        return PER_SYSTEM, systems + (sorted(summary.unary) if not compounds else [])
    if not compounds or len(summary.elements) <= MAX_SYSTEM_ELEMENTS:
        return PER_SYSTEM, plain_systems(summary)
    raise ReferenceSourceError(
        f"{source.path}: {summary.entries} entries spanning {len(summary.elements)} elements "
        f"({len(summary.chemsys)} chemical systems): say what it covers. A whole-database release (every chemical "
        "system of its elements complete, e.g. all of the Materials Project or Alexandria): --covers "
        "whole-database. Whole chemical systems downloaded one by one and concatenated: --covers per-system. "
        "Novelty only: --covers structures-only.")


def decide_energy_scale(summary: SetSummary, source: Source, energy_scale: str | None) -> str:
    """The energy scale of a set's entries; entries under different correction schemes are refused."""
    if energy_scale is not None and energy_scale not in ENERGY_SCALES:
        raise ReferenceSourceError(f"--energy-scale {energy_scale!r}: one of {', '.join(ENERGY_SCALES)}")
    if summary.entries == 0:
        return energy_scale or "unknown"
    named = {s: n for s, n in summary.schemes.items() if s != "unnamed"}
    if len(named) > 1:
        detail = "; ".join(f"{n} under {s} (e.g. {summary.scheme_examples[s]})" for s, n in sorted(named.items()))
        raise ReferenceSourceError(f"{source.path}: entries under different energy-correction schemes ({detail}): "
                                   "one hull cannot mix them. Re-correct them with one scheme (pymatgen's "
                                   "MaterialsProject2020Compatibility) and load that file.")
    if energy_scale:
        return energy_scale
    if source.energy_scale:
        return source.energy_scale
    if named:
        scheme = next(iter(named))
        return SCHEME_SCALE.get(scheme, "unknown")
    if "unnamed" in summary.schemes:
        return "unknown"
    # no corrections at all: elements and intermetallics, identical under MP2020 and uncorrected GGA
    return "mp2020"


# ------------------------------------------------------------------------------- coverage of a candidate
def subsystems(elements: Iterable[str]) -> list[str]:
    """Every chemical system inside ``elements`` (the entries a hull at that composition can use)."""
    els = sorted(set(elements))
    return ["-".join(c) for n in range(1, len(els) + 1) for c in combinations(els, n)]


def systems_containing(elements, systems: list[str]) -> list[str]:
    """The chemical systems (``"Co-Li-Ni-O"``) among ``systems`` that contain every one of ``elements``."""
    need = set(elements)
    return [name for name in systems if need <= set(name.split("-"))]


def covering_sets(elements, sets: list[dict]) -> list[str]:
    """Names of the sets (stored set documents) complete for the chemical system of ``elements``."""
    need = set(elements)
    out = []
    for s in sets:
        if s.get("covers") == WHOLE_DATABASE and need <= set(s.get("unary") or []):
            out.append(s["_id"])
        elif s.get("covers") == PER_SYSTEM and (systems_containing(need, s.get("systems") or [])):
            out.append(s["_id"])
    if not out and len(need) == 1:  # one element: its lowest-energy entry is its whole hull
        out = [s["_id"] for s in sets if s.get("covers") != STRUCTURES_ONLY and need <= set(s.get("unary") or [])]
    return out


def coverage(elements, sets: list[dict], energy_scale: str) -> tuple[list[str], list[str]]:
    """(names of the sets whose entries build the hull, what is missing) for a candidate of ``elements``.

    Only sets on ``energy_scale`` count.  The hull then uses every entry of those sets inside the
    candidate's chemical system; it is trusted when at least one of them covers the system (see
    :func:`covering_sets`).  ``missing`` says what is absent (elements without any entry of their own, or a
    complete system), and names sets that would cover it on another energy scale.
    """
    elements = sorted(set(elements))
    usable = [s for s in sets if s.get("covers") != STRUCTURES_ONLY and s.get("energy_scale") == energy_scale]
    names = [s["_id"] for s in usable]
    if covering_sets(elements, usable):
        return names, []
    have = set().union(*[set(s.get("unary") or []) for s in usable]) if usable else set()
    lacking = [e for e in elements if e not in have]
    if lacking:
        missing = [f"no reference entry for {', '.join(lacking)}"]
    else:
        loaded = ", ".join(f"{s['_id']} ({s['covers']}{': ' + ', '.join(s.get('systems') or []) if s.get('systems') and len(s['systems']) <= 6 else ''})"
                           for s in usable) or "none"
        missing = [f"a complete reference system containing {chemsys_of(elements)} (loaded on the {energy_scale} "
                   f"scale: {loaded})"]
    elsewhere = [s for s in sets if s.get("energy_scale") != energy_scale and s.get("covers") != STRUCTURES_ONLY
                 and covering_sets(elements, [s])]
    if elsewhere:
        missing.append("; ".join(f"set {s['_id']} covers it on the {s['energy_scale']} scale, not the ML stage's "
                                 f"{energy_scale}" for s in elsewhere))
    return names, missing


# ------------------------------------------------------------------------------------ mp-api and load()
def from_mp_api(chemsys: str, set_name: str = "mp") -> Source:
    """Every Materials Project entry of a chemical system (mp-api; ``MP_API_KEY``): a per-system set."""
    key = os.environ.get("MP_API_KEY")
    if not key:
        raise ReferenceSourceError("MP_API_KEY is not set: the Materials Project cannot be queried. Set it, or load "
                                   "reference files (e.g. pymatgen JSON of ComputedStructureEntries).")
    try:
        from mp_api.client import MPRester
    except ImportError:
        raise ReferenceSourceError("mp-api is not installed: pip install mp-api") from None
    with MPRester(key) as mpr:
        entries = mpr.get_entries_in_chemsys(chemsys.split("-"))
    items = iter([_item(e, str(e.entry_id), f"mp:{chemsys}") for e in entries])
    return Source(f"mp:{chemsys}", "mp-api", PER_SYSTEM, "mp2020", items)


def documents(items: Iterable[Item], set_name: str, summary: SetSummary, entries: bool = True,
              structure_elsewhere: bool = False) -> Iterator[tuple[dict | None, dict | None]]:
    """(novelty document or None, hull entry document or None) of each item, counted into ``summary``
    (``entries``: make entry documents at all; ``structure_elsewhere``: see :func:`entry_document`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for item in items:
            summary.add(item)
            yield (item_reference_document(item, set_name) if item.has_structure else None,
                   entry_document(item.entry, set_name, raw=item.raw,
                                  structure_elsewhere=structure_elsewhere and item.has_structure)
                   if entries and item.entry is not None else None)


def load(path: str | Path, set_name: str | None = None, ingest: dict | None = None, covers: str | None = None,
         trust_pickle: bool = False) -> dict:
    """Everything a source holds, in memory (small files, tests): {"structures": [...], "entries": [...],
    "skipped": n, "covers": ..., "systems": [...], "energy_scale": ..., "format": ...}."""
    path = Path(path)
    source = open_source(path, ingest, trust_pickle=trust_pickle)
    name = set_name or default_set_name(path)
    summary, structures, entries = SetSummary(), [], []
    for structure_doc, entry_doc in documents(source.items, name, summary):
        if structure_doc is not None:
            structures.append(structure_doc)
        if entry_doc is not None:
            entries.append(entry_doc)
    kind, systems = decide_coverage(summary, source, covers)
    return {"structures": structures, "entries": entries if kind != STRUCTURES_ONLY else [],
            "skipped": summary.skipped + summary.no_structure,
            "covers": kind, "systems": systems,
            "energy_scale": decide_energy_scale(summary, source, None) if kind != STRUCTURES_ONLY else None,
            "format": source.format}


_SUFFIXES = (".gz", ".bz2", ".xz", ".json", ".pkl", ".pickle", ".csv", ".parquet", ".pq", ".cif")


def default_set_name(path: str | Path) -> str:
    """A set's name from its file: the name without format and compression suffixes
    (``convex_hull_pbe_2023.12.29.json.bz2`` -> ``convex_hull_pbe_2023.12.29``)."""
    name = Path(path).name
    while name.lower().endswith(_SUFFIXES):
        name = name[: name.lower().rfind(".")]
    return name or Path(path).name
