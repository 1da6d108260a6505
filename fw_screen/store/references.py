"""Reference sets: their registry, structure documents and hull entries.

A part of :class:`fw_screen.store.ResultsStore` (it holds the collections these methods use).
"""

from __future__ import annotations

from typing import Iterable, Iterator

from pymongo import UpdateOne
from pymongo.errors import DuplicateKeyError

from fw_screen.store.base import (
    REFERENCES,
    in_chunks,
    insert_many_new,
    insert_new,
    utcnow,
)


class References:
    """Reference sets (:class:`~fw_screen.store.ResultsStore`)."""

    # ---------------------------------------------------------------------------------- references
    def reference_sets(self, states: Iterable[str] = ("active",)) -> list[dict]:
        """The reference set documents (what each set covers, its energy scale, sizes), by name."""
        return sorted(self.sets.find({"state": {"$in": list(states)}}), key=lambda d: d["_id"])

    def reference_set(self, name: str) -> dict | None:
        return self.sets.find_one({"_id": name})

    def begin_reference_set(self, doc: dict) -> bool:
        """Register a set being loaded (state ``loading``): its documents stay invisible until
        :meth:`activate_reference_set`.  False if the name is taken (another process is loading it)."""
        try:
            self.sets.insert_one({**doc, "state": "loading", "started_at": utcnow()})
        except DuplicateKeyError:
            return False
        return True

    def activate_reference_set(self, name: str, fields: dict) -> None:
        self.sets.update_one({"_id": name, "state": "loading"},
                             {"$set": {**fields, "state": "active", "loaded_at": utcnow()}})

    def remove_reference_set(self, name: str) -> dict:
        """Delete a set and every structure and entry it brought (also a load that died half-way)."""
        structures = self.references.delete_many({"set": name}).deleted_count
        entries = self.entries.delete_many({"set": name}).deleted_count
        self.sets.delete_one({"_id": name})
        return {"structures": structures, "entries": entries}

    def insert_reference_docs(self, structures: list[dict], entries: list[dict]) -> dict:
        """Insert the structures and entries of a set being loaded; ids repeated within the set (MP lists
        some materials twice) are kept once.  Returns how many of each were new."""
        return {"structures": insert_many_new(self.references, structures),
                "entries": insert_many_new(self.entries, entries)}

    def _active_set_names(self) -> set[str]:
        return {d["_id"] for d in self.sets.find({"state": "active"}, {"_id": 1})}

    def add_references(self, docs: list[dict]) -> dict:
        """Insert reference structure documents not yet present (by ``_id``): the programmatic way (see
        :meth:`add_entries`); an unregistered set name becomes a structures-only set."""
        result = insert_new(self.references, docs)
        self.register_sets_from_documents(sorted({d["set"] for d in docs}))
        return result

    def references_with_formula(self, formulas: Iterable[str], projection: dict | None = None) -> Iterator[dict]:
        """Reference structures of active sets with one of ``formulas`` (indexed by reduced formula)."""
        return self._active_references({"reduced_formula": {"$in": sorted(set(formulas))}}, projection)

    def disordered_references(self, chemsys: Iterable[str], projection: dict | None = None) -> Iterator[dict]:
        """Partially occupied reference structures of active sets in one of ``chemsys`` (indexed)."""
        return self._active_references({"ordered": False, "chemsys": {"$in": sorted(set(chemsys))}}, projection)

    def _active_references(self, query: dict, projection: dict | None) -> Iterator[dict]:
        active = self._active_set_names()
        fields = {**projection, "set": 1} if projection else None
        for doc in self.references.find(query, fields):
            if doc.get("set") in active:
                yield doc

    def cache_reference_reduction(self, updates: list[tuple[str, dict]]) -> None:
        ops = [UpdateOne({"_id": rid}, {"$set": fields}) for rid, fields in updates]
        for chunk in in_chunks(ops, 1000):
            self.references.bulk_write(chunk, ordered=False)

    def reference_count(self) -> int:
        return self.references.estimated_document_count()

    # ------------------------------------------------------------------------------ hull entries
    def hull_entry_docs(self, elements: Iterable[str], set_names: Iterable[str]) -> list[dict]:
        """The hull fields (composition, corrected energy, id) of every entry of ``set_names`` inside the
        chemical system of ``elements``: one query on the ``chemsys`` index, one ``$in`` of its sub-systems."""
        from fw_screen.science.references import subsystems

        wanted = set(set_names)
        fields = {"composition": 1, "energy": 1, "entry_id": 1, "set": 1, "chemsys": 1}
        docs = self.entries.find({"chemsys": {"$in": subsystems(elements)}}, fields)
        out = [d for d in docs if d.get("set") in wanted]
        legacy = [d["_id"] for d in out if "composition" not in d]  # documents of older fw-screen versions
        if legacy:
            full = {d["_id"]: d for d in self.entries.find({"_id": {"$in": legacy}}, {"entry": 1})}
            out = [full.get(d["_id"], d) for d in out]
        return out

    def entries_in_chemsys(self, elements: Iterable[str], energy_scale: str | None = None) -> list[dict]:
        """Every entry of an active set whose elements are a subset of ``elements`` (one indexed query), with
        the whole entry dict as ``entry``; only sets on ``energy_scale`` when it is given."""
        from fw_screen.science.references import entry_dict, subsystems

        sets = {s["_id"]: s for s in self.reference_sets()}
        if energy_scale is not None:
            sets = {k: s for k, s in sets.items() if s.get("energy_scale") == energy_scale}
        out = []
        for d in self.entries.find({"chemsys": {"$in": subsystems(elements)}}):
            if d.get("set") in sets:
                out.append({**{k: v for k, v in d.items() if k != "entry_json"}, "entry": entry_dict(d)})
        # entries of a release keep their structure once, in the set's novelty document of the same _id
        elsewhere = [d["_id"] for d in out if d.get("structure_in") == "references"]
        structures = self.documents_by_id(REFERENCES, elsewhere, ["structure"]) if elsewhere else {}
        for d in out:
            if d.get("structure_in") == "references":
                if d["_id"] in structures:
                    d["entry"]["structure"] = structures[d["_id"]]["structure"]
                else:  # its structure document is gone: the entry still serves a hull
                    d["entry"].update({"@module": "pymatgen.entries.computed_entries", "@class": "ComputedEntry"})
        return out

    def entry_count(self) -> int:
        return self.entries.estimated_document_count()

    def add_entries(self, docs: list[dict], energy_scale: str = "mp2020") -> dict:
        """Insert hull entry documents not yet present (by ``_id``): the programmatic way, without a source
        file (:func:`fw_screen.stages.references.load_references` is the user's).  A set name not registered yet gets
        a set document from what its documents hold (see :meth:`register_sets_from_documents`)."""
        result = insert_new(self.entries, docs)
        self.register_sets_from_documents(sorted({d["set"] for d in docs}), energy_scale)
        return result

    def register_sets_from_documents(self, names: Iterable[str], energy_scale: str = "mp2020",
                                     note: str = "registered from its documents") -> list[str]:
        """Give set names that have documents but no set document one, active: a per-system set covering
        what a plain file would (the union of its elements when it has their own entries and at most 8 of
        them; its elements alone when it has only those), or structures-only without entries."""
        from fw_screen.science import references as refs

        added = []
        for name in names:
            if self.sets.find_one({"_id": name}, {"_id": 1}):
                continue
            summary = refs.SetSummary.from_entry_docs(self.entries.find({"set": name}, {"elements": 1}))
            if summary.entries:
                systems, covers = refs.plain_systems(summary), refs.PER_SYSTEM
            else:
                systems, covers = [], refs.STRUCTURES_ONLY
            self.sets.update_one({"_id": name}, {"$setOnInsert": {
                "covers": covers, "systems": systems, "energy_scale": energy_scale if summary.entries else None,
                "unary": sorted(summary.unary), "elements": sorted(summary.elements), "n_entries": summary.entries,
                "n_structures": self.references.count_documents({"set": name}), "format": "documents",
                "source": None, "state": "active", "loaded_at": utcnow(), "note": note}}, upsert=True)
            added.append(name)
        return added

    def migrate_legacy_references(self) -> list[str]:
        """Give reference documents of fw-screen versions without reference sets a set document each.

        Runs only while no set is registered (the first load of a newer fw-screen): each older set becomes a
        per-system set on the MP2020 scale covering what the older rule said.
        """
        if self.sets.estimated_document_count() or not (self.entries.estimated_document_count()
                                                         or self.references.estimated_document_count()):
            return []
        names = sorted(set(self.entries.distinct("set")) | set(self.references.distinct("set")))
        self.register_sets_from_documents(names, note="registered from the documents of an older fw-screen")
        return names
