"""How candidates store their structures: one compact JSON string per structure, decoded only when read.

A whole-campaign pass (status, yields, the report's aggregations) makes the server decode every document it
scans; a structure stored as nested dictionaries (a lattice, then per site a species list, two coordinate
lists, a label and properties) is most of that work, while the pass never looks inside it.  Stored as one
string (``json.dumps`` of ``Structure.as_dict()``: Python's float repr round-trips, so the structure read back
is the one written) the server decodes one string instead (``benchmarks/bench_scale.py --passes``).

Any MongoDB client reads one with ``Structure.from_dict(json.loads(doc["structure"]))``; :class:`Candidates`
does it for fw-screen: every ``find`` / ``find_one`` on the candidates collection returns dictionaries, a
projection into a structure (``ml.structure_relaxed.sites.label``) fetches the whole string, and documents
written before this storage existed (nested dictionaries) read the same.
"""

from __future__ import annotations

import json
from typing import Any

#: where a candidate document holds a structure
STRUCTURE_PATHS = ("structure", "structure_reduced", "ml.structure_relaxed", "ml.structure_relaxed_reduced",
                   "dft.structure_relaxed")
_PARENTS = {p.rsplit(".", 1)[0] for p in STRUCTURE_PATHS if "." in p}


def encode(structure: dict) -> str:
    return json.dumps(structure, separators=(",", ":"))


def decode(value: Any) -> Any:
    """A stored structure as a dictionary (a string is decoded; a nested dictionary, written before compact
    storage, or None is returned as it is)."""
    return json.loads(value) if isinstance(value, str) else value


def _encoded(path: str, value: Any) -> Any:
    if path in STRUCTURE_PATHS:
        return encode(value) if isinstance(value, dict) else value
    if path in _PARENTS and isinstance(value, dict):
        return {k: _encoded(f"{path}.{k}", v) for k, v in value.items()}
    return value


def encode_fields(fields: dict) -> dict:
    """A candidate's ``$set`` fields (or a new document) with every structure in it as its string: at a
    structure's own path (``ml.structure_relaxed_reduced``) or inside its parent (``{"ml": {...}}``)."""
    return {k: _encoded(k, v) for k, v in fields.items()}


def decode_document(doc: dict | None) -> dict | None:
    """A candidate document as read, with its structures (where present) as dictionaries again."""
    if not doc:
        return doc
    for path in STRUCTURE_PATHS:
        head, _, last = path.rpartition(".")
        parent = doc.get(head) if head else doc
        if isinstance(parent, dict) and isinstance(parent.get(last), str):
            parent[last] = json.loads(parent[last])
    return doc


def projection(fields):
    """A projection with every path into a structure widened to the structure itself (its string)."""
    if not isinstance(fields, dict):
        return fields
    out = {}
    for k, v in fields.items():
        inside = next((p for p in STRUCTURE_PATHS if k.startswith(p + ".")), None)
        out[inside or k] = v
    return out


class _DecodingCursor:
    """A pymongo cursor whose documents come back with their structures decoded."""

    def __init__(self, cursor):
        self._cursor = cursor

    def sort(self, *a, **k):
        self._cursor = self._cursor.sort(*a, **k)
        return self

    def limit(self, n):
        self._cursor = self._cursor.limit(n)
        return self

    def skip(self, n):
        self._cursor = self._cursor.skip(n)
        return self

    def batch_size(self, n):
        self._cursor = self._cursor.batch_size(n)
        return self

    def __iter__(self):
        return (decode_document(d) for d in self._cursor)

    def __next__(self):
        return decode_document(next(self._cursor))

    def __getattr__(self, name):
        return getattr(self._cursor, name)


class CandidateCollection:
    """The candidates collection as fw-screen reads it: ``find`` / ``find_one`` decode the structures (and
    widen projections into them); every other method is pymongo's :class:`~pymongo.collection.Collection`
    itself (writes encode with :func:`encode_fields` where they are built, in the store's parts)."""

    def __init__(self, collection):
        self.collection = collection

    def find(self, filter=None, projection_=None, *args, **kwargs):
        if "projection" in kwargs:
            kwargs["projection"] = projection(kwargs["projection"])
        return _DecodingCursor(self.collection.find(filter, projection(projection_), *args, **kwargs))

    def find_one(self, filter=None, projection_=None, *args, **kwargs):
        if "projection" in kwargs:
            kwargs["projection"] = projection(kwargs["projection"])
        return decode_document(self.collection.find_one(filter, projection(projection_), *args, **kwargs))

    def __getattr__(self, name):
        return getattr(self.collection, name)
