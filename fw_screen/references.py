"""Reference structures for novelty: loaders that turn files (or mp-api) into reference documents.

Accepted: a folder of CIFs, pymatgen JSON (``.json`` / ``.json.gz``) of ComputedStructureEntries,
Structures or their dicts (a list, or a mapping id -> object), CSV/parquet with a CIF column, and the
Materials Project through mp-api when ``MP_API_KEY`` is set.  Entries without a structure (plain
ComputedEntry) cannot serve novelty and are counted, not loaded.  Pure: no database here.
"""

from __future__ import annotations

import gzip
import json
import os
import warnings
from collections import Counter
from pathlib import Path
from monty.json import MontyDecoder
from pymatgen.core import Structure
from pymatgen.entries.computed_entries import ComputedEntry


class ReferenceSourceError(ValueError):
    """A reference source cannot be read."""


def reference_document(structure: Structure, ref_id: str, set_name: str, properties: dict | None = None) -> dict:
    comp = structure.composition
    return {
        "_id": f"{set_name}:{ref_id}",
        "set": set_name,
        "ref_id": ref_id,
        "formula": comp.formula.replace(" ", ""),
        "reduced_formula": comp.reduced_formula,
        "chemsys": "-".join(sorted({el.symbol for el in comp.elements})),
        "nsites": len(structure),
        "structure": structure.as_dict(),
        "properties": properties or {},
    }


def entry_document(entry, set_name: str) -> dict:
    """A hull reference: a (Computed)Entry on the MP2020-corrected scale, keyed by chemical system."""
    elements = sorted({el.symbol for el in entry.composition.elements})
    entry_id = str(entry.entry_id or entry.composition.reduced_formula)
    return {"_id": f"{set_name}:{entry_id}", "set": set_name, "entry_id": entry_id, "chemsys": "-".join(elements),
            "elements": elements, "energy_per_atom": float(entry.energy_per_atom), "entry": entry.as_dict()}


def _open_json(path: Path):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        return json.load(fh)


def _from_object(obj, fallback_id: str) -> tuple[Structure | None, str, dict]:
    if isinstance(obj, dict) and "@class" in obj:
        obj = MontyDecoder().process_decoded(obj)
    elif isinstance(obj, dict) and "lattice" in obj and "sites" in obj:
        obj = Structure.from_dict(obj)
    if isinstance(obj, Structure):
        return obj, fallback_id, {}
    structure = getattr(obj, "structure", None)
    ref_id = str(getattr(obj, "entry_id", None) or fallback_id)
    props = {}
    for key in ("e_above_hull", "e_form_per_atom"):
        if isinstance(getattr(obj, "data", None), dict) and key in obj.data:
            props[key] = obj.data[key]
    if hasattr(obj, "energy_per_atom"):
        props["energy_per_atom"] = float(obj.energy_per_atom)
    return structure, ref_id, props


def from_json(path: Path, set_name: str) -> dict:
    data = _open_json(path)
    items = list(data.items()) if isinstance(data, dict) and "@class" not in data else list(enumerate(
        data if isinstance(data, list) else [data]))
    docs, entries, skipped = [], [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, obj in items:
            decoded = MontyDecoder().process_decoded(obj) if isinstance(obj, dict) and "@class" in obj else obj
            if isinstance(decoded, ComputedEntry):
                entries.append(entry_document(decoded, set_name))
            structure, ref_id, props = _from_object(decoded, f"{path.stem}-{key}")
            if structure is None:
                skipped += 1
                continue
            # MP entries carry e_above_hull at the top level of their dict
            if isinstance(obj, dict) and "e_above_hull" in obj:
                props["e_above_hull"] = obj["e_above_hull"]
            docs.append(reference_document(structure, ref_id, set_name, props))
    return {"structures": docs, "entries": entries, "skipped": skipped, "systems": complete_systems(entries)}


#: a file of entries spanning more elements than this is a collection (e.g. elemental references), not
#: one chemical system downloaded whole
MAX_SYSTEM_ELEMENTS = 8


def systems_containing(elements, systems: list[str]) -> list[str]:
    """The chemical systems (``"Co-Li-Ni-O"``) among ``systems`` that contain every one of ``elements``."""
    need = set(elements)
    return [name for name in systems if need <= set(name.split("-"))]


def complete_systems(entry_docs: list[dict]) -> list[str]:
    """The chemical system a file of entries covers completely, by the convention that such files are
    downloaded per system (MP ``get_entries_in_chemsys``): the union of the elements when it has its
    elements' own entries and at most ``MAX_SYSTEM_ELEMENTS`` elements; otherwise none."""
    elements = sorted({el for d in entry_docs for el in d["elements"]})
    single = {d["chemsys"] for d in entry_docs if len(d["elements"]) == 1}
    if 2 <= len(elements) <= MAX_SYSTEM_ELEMENTS and set(elements) <= single:
        return ["-".join(elements)]
    return []


def _parse_cif(text: str) -> Structure:
    from fw_screen.validity import parse_structure

    return parse_structure(text)


def from_cif_folder(path: Path, set_name: str) -> dict:
    docs, skipped = [], 0
    for f in sorted(path.rglob("*.cif")):
        try:
            docs.append(reference_document(_parse_cif(f.read_text(errors="replace")), f.stem, set_name))
        except Exception:
            skipped += 1
    return {"structures": docs, "entries": [], "skipped": skipped, "systems": []}


def from_table(path: Path, set_name: str, ingest: dict) -> dict:
    from fw_screen.ingest import read_inputs, source_key

    raws = list(read_inputs(path, ingest))
    counts = Counter(raw.source.get("material_id") for raw in raws)
    docs, skipped = [], 0
    for raw in raws:
        try:
            structure = _parse_cif(raw.text)
        except Exception:
            skipped += 1
            continue
        mid = raw.source.get("material_id")
        # an id repeated in the table (CrystaLLM-pi reuses them across conditions) is made unique by row
        ref_id = mid if mid and counts[mid] == 1 else (f"{mid}@{source_key(raw.source)}" if mid else
                                                        source_key(raw.source))
        docs.append(reference_document(structure, str(ref_id), set_name))
    return {"structures": docs, "entries": [], "skipped": skipped, "systems": []}


def from_mp_api(chemsys: str, set_name: str = "mp") -> dict:
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
    docs = [reference_document(e.structure, e.entry_id, set_name) for e in entries if hasattr(e, "structure")]
    entry_docs = [entry_document(e, set_name) for e in entries]
    return {"structures": docs, "entries": entry_docs, "skipped": len(entries) - len(docs),
            "systems": ["-".join(sorted(chemsys.split("-")))]}


def load(path: str | Path, set_name: str | None = None, ingest: dict | None = None) -> dict:
    """Reference structures and entries from a file or folder:
    {"structures": [...], "entries": [...], "skipped": entries without a structure}."""
    path = Path(path)
    if not path.exists():
        raise ReferenceSourceError(f"reference source not found: {path}")
    name = set_name or path.name.split(".")[0]
    lower = path.name.lower()
    if path.is_dir():
        return from_cif_folder(path, name)
    if lower.endswith((".json", ".json.gz")):
        return from_json(path, name)
    if lower.endswith((".csv", ".parquet", ".pq")):
        from fw_screen.spec import default_spec

        return from_table(path, name, ingest or default_spec()["ingest"])
    if lower.endswith(".cif"):
        from fw_screen.ingest import split_blocks

        docs = [reference_document(_parse_cif(b), f"{path.stem}-{i}", name)
                for i, b in enumerate(split_blocks(path.read_text(errors="replace")))]
        return {"structures": docs, "entries": [], "skipped": 0, "systems": []}
    raise ReferenceSourceError(f"{path}: unknown reference format (folder of CIFs, .json[.gz], .csv, .parquet, .cif)")

