"""Campaigns: a campaign's stored spec, its names, the sequence numbers of its candidates.

A part of :class:`fw_screen.store.ResultsStore` (it holds the collections these methods use).
"""

from __future__ import annotations

from collections.abc import Mapping

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from fw_screen.spec import CampaignSpec, as_spec, upgrade
from fw_screen.store.base import StoreError, utcnow


class Campaigns:
    """Campaigns (:class:`~fw_screen.store.ResultsStore`)."""

    # ------------------------------------------------------------------------------------ campaigns
    def register_campaign(self, spec: Mapping) -> CampaignSpec:
        """Store the spec of a new campaign, or check it equals the stored one (upgraded with the settings
        added since it was stored).  Returns the campaign's :class:`~fw_screen.spec.CampaignSpec`."""
        spec = as_spec(spec)
        data = spec.to_dict()
        name = spec.campaign
        try:
            self.campaigns.insert_one({"_id": name, "spec": data, "created": utcnow(), "next_seq": 0,
                                       "counters": True})  # kept from the first candidate on (store.counters)
            self.ensure_indexes()
            return spec
        except DuplicateKeyError:
            stored = upgrade(self.campaigns.find_one({"_id": name})["spec"])
            if stored != data:
                changed = sorted(k for k in set(stored) | set(data) if stored.get(k) != data.get(k))
                raise StoreError(
                    f"campaign {name!r} already exists with a different spec (fields differ: "
                    f"{', '.join(changed)}); use a new campaign name, or the stored spec") from None
            return as_spec(stored)

    def campaign_spec(self, name: str) -> CampaignSpec:
        """The campaign's spec as stored, with the settings added since (:func:`fw_screen.spec.upgrade`)."""
        doc = self.campaigns.find_one({"_id": name}, {"spec": 1})
        if doc is None:
            raise StoreError(f"unknown campaign {name!r}")
        return as_spec(doc["spec"])

    def campaign_names(self) -> list[str]:
        return sorted(d["_id"] for d in self.campaigns.find({}, {"_id": 1}))

    def _reserve_seq(self, campaign: str, n: int) -> int:
        """The first of ``n`` consecutive sequence numbers, taken from the post-image (the value the write
        itself produced, so it is atomic on every server, the embedded one included)."""
        doc = self.campaigns.find_one_and_update({"_id": campaign}, {"$inc": {"next_seq": n}},
                                                 projection={"next_seq": 1}, return_document=ReturnDocument.AFTER)
        return doc["next_seq"] - n
