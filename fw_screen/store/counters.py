"""Funnel counters: per campaign and band-gap condition, the counts ``fw-screen status`` prints, kept with
every status transition so that reading them costs the same at 100 candidates as at 100,000.

A part of :class:`fw_screen.store.ResultsStore` (it holds the collections these methods use).

How a crash can never make the counters disagree with the candidates (MongoDB writes one document
atomically; the counters live in other documents, and a standalone server has no transactions):

1. the write that changes a candidate also ``$push``-es onto it a *tally entry* ``{t, from, to, ...}``:
   the token ``t`` of this write and the facts the counters need (old and new status, the first failing
   validity check, the ML e_above_hull and band-gap hit).  Candidate and entry change in one write;
2. the counter document of each (campaign, condition) the token touched gets the summed deltas with
   ``$inc`` and the token with ``$push`` onto ``applied``, in one write guarded by ``applied != t`` (so
   applying a token twice counts it once);
3. the entries are pulled from the candidates, then the token from ``applied``.

A crash after 1 leaves entries whose token no counter document has applied: a reader adds them
(:meth:`Counters.funnel_counts`), ``fw-screen recover`` (:meth:`Counters.finish_tallies`) applies them.  A crash
after 2 leaves entries whose token is applied: a reader skips them.  ``fw-screen status --recount``
recomputes everything from the candidate documents and reports any difference.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from typing import Iterable

from pymongo.errors import DuplicateKeyError

from fw_screen import state as st
from fw_screen.store.base import condition_order, number

#: the condition a counter document is kept per (the band-gap target CrystaLLM-pi generates for)
CONDITION = "targets.band_gap.value"
#: a token older than this whose entries are gone may be dropped from ``applied``
STALE_TOKEN_S = 600


def new_token() -> str:
    """A tally token: its creation time (seconds) first, so stale ones are recognised."""
    return f"{int(time.time())}-{uuid.uuid4().hex[:12]}"


def tally_entry(token: str, old: str | None, new: str, fields: dict) -> dict:
    """What a candidate's write records for the counters: ``old`` -> ``new`` (``old`` None: a new candidate),
    the first failing check of an invalid one, the ML result a novel one leaves with."""
    entry: dict = {"t": token, "from": old, "to": new}
    if new == st.INVALID:
        entry["ff"] = str(((fields.get("validity") or {}).get("first_failure")))
    if old == st.NOVEL and isinstance(fields.get("ml"), dict):
        entry["ml"] = ml_facts(fields["ml"])
    return entry


def ml_facts(ml: dict) -> dict:
    """The ML result as the yields count it: e_above_hull (a number or None) and the band-gap hit."""
    e = ml.get("e_above_hull")
    hit = (((ml.get("hits") or {}).get("band_gap")) or {}).get("hit")
    return {"e": e if number(e) else None,
            "hit": hit if isinstance(hit, bool) else None}


def ml_keys(facts: dict | None, threshold: float) -> Counter:
    """The yield counters an ML result of a novel(-or-later) candidate adds (it is valid, so a band-gap
    prediction counts among the valid ones)."""
    out: Counter = Counter()
    if not facts:
        return out
    e, hit = facts.get("e"), facts.get("hit")
    if hit is not None:
        out["valid_band_gap_evaluated"] += 1
        out["valid_band_gap_hits"] += hit
    if e is not None:
        out["vun_evaluated"] += 1
        if e <= threshold:
            out["vsun"] += 1
            if hit is not None:
                out["vsun_band_gap_evaluated"] += 1
                out["vsun_band_gap_hits"] += hit
    return out


def tally_delta(entry: dict, threshold: float) -> Counter:
    """The counter deltas of one tally entry (a status move keeps the ML result; ``no_reference`` -> ``novel``
    drops it: ``ml_old``)."""
    d: Counter = Counter({f"status.{entry['to']}": 1})
    if entry.get("from") is not None:
        d[f"status.{entry['from']}"] -= 1
    if "ff" in entry:
        d[f"first_failure.{entry['ff']}"] += 1
    d.update(ml_keys(entry.get("ml"), threshold))
    d.subtract(ml_keys(entry.get("ml_old"), threshold))
    return Counter({k: v for k, v in d.items() if v})


def counts_of(docs: Iterable[dict], threshold: float) -> dict[object, Counter]:
    """{condition: counters} recomputed from candidate documents (status, validity.first_failure, ml):
    what the kept counters must equal (``fw-screen status --recount``)."""
    out: dict[object, Counter] = defaultdict(Counter)
    for d in docs:
        entry = {"to": d["status"], "from": None}
        if d["status"] == st.INVALID:
            entry["ff"] = str((d.get("validity") or {}).get("first_failure"))
        if d["status"] in st.NOVEL_OR_LATER and d.get("ml"):
            entry["ml"] = ml_facts(d["ml"])
        out[condition_of(d)].update(tally_delta(entry, threshold))
    return out


def condition_of(doc: dict):
    return ((doc.get("targets") or {}).get("band_gap") or {}).get("value")


def counter_id(campaign: str, condition) -> str:
    return f"{campaign}|{json.dumps(condition)}"


def flatten(counts: dict, prefix: str = "") -> Counter:
    """``{"status": {"valid": 3}, "vsun": 1}`` -> ``{"status.valid": 3, "vsun": 1}``."""
    out: Counter = Counter()
    for k, v in (counts or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif v:
            out[f"{prefix}{k}"] += v
    return out


class Counters:
    """Funnel counters (:class:`~fw_screen.store.ResultsStore`)."""

    def _threshold(self, campaign: str) -> float:
        """The campaign's stability threshold (fixed with its spec: read once per store)."""
        cache = self.__dict__.setdefault("_thresholds", {})
        if campaign not in cache:
            cache[campaign] = float(self.campaign_spec(campaign).ml.stability_threshold)
        return cache[campaign]

    def apply_tally(self, token: str) -> int:
        """Steps 2 and 3 of the module's protocol for one token; returns how many entries it carried."""
        sums: dict[tuple, Counter] = defaultdict(Counter)
        n = 0
        for d in self.candidates.find({"tally_pending.t": token}, {"campaign": 1, CONDITION: 1, "tally_pending": 1}):
            thr = self._threshold(d["campaign"])
            for entry in d.get("tally_pending") or ():
                if entry.get("t") == token:
                    sums[(d["campaign"], condition_of(d))].update(tally_delta(entry, thr))
                    n += 1
        for (campaign, condition), delta in sums.items():
            inc = {f"counts.{k}": v for k, v in delta.items() if v}
            if not inc:
                continue
            try:
                self.counts.update_one({"_id": counter_id(campaign, condition), "applied": {"$ne": token}},
                                       {"$inc": inc, "$push": {"applied": token},
                                        "$setOnInsert": {"campaign": campaign, "condition": condition}},
                                       upsert=True)
            except DuplicateKeyError:  # this token is applied there already (a crashed writer's, finished twice)
                pass
        if n:
            self.candidates.update_many({"tally_pending.t": token}, {"$pull": {"tally_pending": {"t": token}}})
        self.counts.update_many({"applied": token}, {"$pull": {"applied": token}})
        return n

    def pending_entries(self, campaign: str | None = None) -> list[tuple[dict, dict]]:
        """(candidate, entry) of every tally entry still on a candidate (a write in flight, or a crash)."""
        out = []
        for d in self.candidates.find({"tally_pending.t": {"$gt": ""}}, {"campaign": 1, CONDITION: 1, "tally_pending": 1}):
            if campaign is None or d.get("campaign") == campaign:
                out.extend((d, e) for e in d.get("tally_pending") or ())
        return out

    def finish_tallies(self, min_age_s: float = STALE_TOKEN_S, dry_run: bool = False) -> dict:
        """Apply every token at least ``min_age_s`` old left on candidates by a writer that stopped between
        its steps (``fw-screen recover``), and drop such tokens no candidate holds any more from ``applied``.

        A younger token may belong to a writer still running (its steps take milliseconds): finishing it
        from here could race that writer's own guarded ``$inc`` after this pull, so it is left to it."""
        cutoff = time.time() - min_age_s
        pending = {e["t"] for _, e in self.pending_entries()}
        tokens = sorted(t for t in pending if _born(t) <= cutoff)
        if dry_run:
            return {"tokens": len(tokens), "entries": None, "counter_docs_cleaned": 0}
        entries = sum(self.apply_tally(t) for t in tokens)
        live = pending - set(tokens)
        dropped = 0
        for doc in self.counts.find({"applied.0": {"$exists": True}}, {"applied": 1}):
            stale = [t for t in doc["applied"] if t not in live and _born(t) <= cutoff]
            if stale:
                dropped += self.counts.update_one({"_id": doc["_id"]},
                                                  {"$pull": {"applied": {"$in": stale}}}).modified_count
        return {"tokens": len(tokens), "entries": entries, "counter_docs_cleaned": dropped}

    def has_counters(self, campaign: str) -> bool:
        """Whether the campaign's counters were kept from its first candidate (or rebuilt by ``--recount
        --repair``): campaigns stored before counters existed are counted from their documents."""
        return bool((self.campaigns.find_one({"_id": campaign}, {"counters": 1}) or {}).get("counters"))

    def funnel_counts(self, campaign: str) -> dict[object, Counter]:
        """{condition: flat counters} of the campaign: the counter documents plus the entries of writes not yet
        applied (read first, so a write finishing in between is counted once)."""
        pending = self.pending_entries(campaign)
        docs = {d["_id"]: d for d in self.counts.find({"campaign": campaign})}
        out: dict[object, Counter] = defaultdict(Counter)
        for d in docs.values():
            out[d.get("condition")].update(flatten(d.get("counts")))
        thr = self._threshold(campaign) if pending else None
        for cand, entry in pending:
            cond = condition_of(cand)
            if entry["t"] not in (docs.get(counter_id(campaign, cond)) or {}).get("applied", ()):
                out[cond].update(tally_delta(entry, thr))
        return {c: Counter({k: v for k, v in n.items() if v}) for c, n in out.items()}

    def recount(self, campaign: str) -> dict[object, Counter]:
        """The counters recomputed from the campaign's candidate documents (a whole-campaign pass)."""
        fields = {"status": 1, CONDITION: 1, "validity.first_failure": 1, "ml.e_above_hull": 1,
                  "ml.hits.band_gap.hit": 1}
        return dict(counts_of(self.candidates.find({"campaign": campaign}, fields), self._threshold(campaign)))

    def replace_counters(self, campaign: str, counts: dict[object, Counter]) -> None:
        """Store ``counts`` as the campaign's counters (``--recount --repair``; run it while no worker writes)."""
        self.counts.delete_many({"campaign": campaign})
        for cond, c in counts.items():
            nested: dict = {}
            for k, v in c.items():
                node = nested
                *path, last = k.split(".")
                for p in path:
                    node = node.setdefault(p, {})
                node[last] = v
            self.counts.insert_one({"_id": counter_id(campaign, cond), "campaign": campaign, "condition": cond,
                                    "counts": nested, "applied": []})
        self.campaigns.update_one({"_id": campaign}, {"$set": {"counters": True}})

    def counted_yield_rows(self, campaign: str) -> tuple[list[dict], dict[str, int]]:
        """:meth:`yield_count_rows` at the campaign's stability threshold, and the first failing checks, from
        the counters (the after-relaxation counts from the ML-done candidates alone: an indexed read of those,
        not of the campaign)."""
        thr = self._threshold(campaign)
        relaxed = {r["condition"]: r for r in self.relaxed_count_rows(campaign, [thr])}
        rows, failures = [], Counter()
        for cond, c in sorted(self.funnel_counts(campaign).items(), key=lambda kv: condition_order(kv[0])):
            status = {s: c.get(f"status.{s}", 0) for s in st.ORDER if c.get(f"status.{s}", 0)}
            if not status:
                continue
            failures.update({k.split(".", 1)[1]: v for k, v in c.items() if k.startswith("first_failure.")})
            f = st.funnel(status)
            shared = {"valid": f["valid"], "valid_unique": f["unique"], "vun": f["novel"],
                      "vun_evaluated": c.get("vun_evaluated", 0),
                      "valid_band_gap_evaluated": c.get("valid_band_gap_evaluated", 0),
                      "valid_band_gap_hits": c.get("valid_band_gap_hits", 0)}
            counts = {thr: {**shared, "vsun": c.get("vsun", 0),
                            "vsun_band_gap_evaluated": c.get("vsun_band_gap_evaluated", 0),
                            "vsun_band_gap_hits": c.get("vsun_band_gap_hits", 0)}}
            rel = relaxed.get(cond) or {"checked": 0, "known": 0, "duplicate": 0, "sun": {thr: 0}}
            rows.append({"condition": cond, "n": sum(status.values()), "status": status, "counts": counts,
                         "relaxed": {k: rel[k] for k in ("checked", "known", "duplicate", "sun")}})
        return rows, {k: v for k, v in failures.items() if v}


def _born(token: str) -> float:
    try:
        return float(token.split("-", 1)[0])
    except ValueError:
        return 0.0

