"""MongoDB access of fw-screen's own collections, one :class:`ResultsStore` made of one part per concern
(campaigns, candidates, analysis aggregations, references, the ML stage, the DFT tiers, leases); the
FireWorks collections are FireWorks' business (:mod:`fw_screen.orchestration.launchpad`).
"""

from __future__ import annotations

from pymongo import ASCENDING
from pymongo.database import Database

from fw_screen.store.analysis import Analysis
from fw_screen.store.base import (
    CAMPAIGNS,
    CANDIDATES,
    COUNTS,
    DFT_REFERENCES,
    ENTRIES,
    LOCKS,
    REFERENCES,
    SETS,
)
from fw_screen.store.campaigns import Campaigns
from fw_screen.store.candidates import Candidates
from fw_screen.store.counters import Counters
from fw_screen.store.structures import CandidateCollection
from fw_screen.store.dft import DFTResults
from fw_screen.store.leases import Leases
from fw_screen.store.ml import MLStage
from fw_screen.store.references import References


class ResultsStore(Campaigns, Candidates, Counters, Analysis, References, MLStage, DFTResults, Leases):
    """fw-screen's view of one MongoDB database."""

    def __init__(self, db: Database):
        self.db = db
        self.candidates = CandidateCollection(db[CANDIDATES])  # structures decoded as read (store.structures)
        self.campaigns = db[CAMPAIGNS]
        self.references = db[REFERENCES]
        self.entries = db[ENTRIES]
        self.sets = db[SETS]
        self.locks = db[LOCKS]
        self.dft_references = db[DFT_REFERENCES]
        self.counts = db[COUNTS]

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def from_launchpad(cls, launchpad) -> "ResultsStore":
        return cls(launchpad.db)

    @classmethod
    def from_file(cls, path: str) -> "ResultsStore":
        """A store on the database a LaunchPad YAML file names (FireWorks' own connection logic)."""
        from fireworks import LaunchPad

        return cls(LaunchPad.from_file(path).db)

    def ensure_indexes(self) -> None:
        """The indexes every query of the funnel runs on.

        The embedded server (like any planner, but strictly) serves a filter from an index only when the
        filter's equality fields are exactly a leading prefix of the index, optionally followed by ONE
        range/``$in`` field; anything else reads the whole campaign.  So each query below has its own index
        and keeps that shape (tests/test_query_plans.py checks every query the stages send).
        """
        c = self.candidates
        c.create_index([("campaign", ASCENDING), ("status", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("batch", ASCENDING), ("status", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("seq", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("shard", ASCENDING), ("status", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("match_key", ASCENDING), ("status", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("reduced_formula", ASCENDING)])
        c.create_index("content_hash")
        c.create_index("tally_pending.t")  # funnel-counter entries of writes in flight (fw_screen.store.counters)
        self.counts.create_index("campaign")
        self.references.create_index("reduced_formula")
        self.references.create_index("match_key")
        self.references.create_index([("ordered", ASCENDING), ("chemsys", ASCENDING)])
        self.references.create_index("set")
        self.entries.create_index("chemsys")
        self.entries.create_index("set")
        self.sets.create_index("state")
        c.create_index([("campaign", ASCENDING), ("ml_batch", ASCENDING), ("status", ASCENDING)])
        c.create_index([("dft.hull_status", ASCENDING), ("dft.protocol_id", ASCENDING)])
        self.dft_references.create_index([("protocol_id", ASCENDING), ("key", ASCENDING)])
        # analysis: hull tables sorted by ML/DFT hull distance, filtered by chemical system or condition
        c.create_index([("campaign", ASCENDING), ("ml.e_above_hull", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("dft.e_above_hull", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("chemsys", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("targets.band_gap.value", ASCENDING), ("status", ASCENDING)])
