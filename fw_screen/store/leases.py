"""Leases (``fws_locks``): one holder at a time for a shard, a pass or a campaign step; a dead holder's lease expires.

A part of :class:`fw_screen.store.ResultsStore` (it holds the collections these methods use).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
import uuid

from pymongo.errors import DuplicateKeyError

from fw_screen.store.base import StoreError, utcnow


class Leases:
    """Leases (``fws_locks``) (:class:`~fw_screen.store.ResultsStore`)."""

    # --------------------------------------------------------------------------------------- locks
    def acquire_lock(self, name: str, lease_s: float = 300, wait_s: float = 3600, poll_s: float = 0.5) -> str:
        """Take the named lease (waiting for a live holder); returns the owner token."""
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + wait_s
        while True:
            now = utcnow()
            try:
                self.locks.update_one(
                    {"_id": name, "$or": [{"owner": None}, {"expires": {"$lt": now}}]},
                    {"$set": {"owner": owner, "expires": now + dt.timedelta(seconds=lease_s)}},
                    upsert=True)
                return owner
            except DuplicateKeyError:
                if time.monotonic() > deadline:
                    raise StoreError(f"lock {name} still held after {wait_s:.0f} s") from None
                time.sleep(poll_s)

    def renew_lock(self, name: str, owner: str, lease_s: float = 300) -> bool:
        res = self.locks.update_one({"_id": name, "owner": owner},
                                    {"$set": {"expires": utcnow() + dt.timedelta(seconds=lease_s)}})
        return res.matched_count == 1

    def held_locks(self) -> list[dict]:
        """Leases currently held (owner set), with their expiry."""
        return list(self.locks.find({"owner": {"$ne": None}}))

    def release_lock(self, name: str, owner: str) -> None:
        self.locks.update_one({"_id": name, "owner": owner}, {"$set": {"owner": None, "expires": None}})


#: query fields of ``candidates`` with a (campaign, field) index, in the order a campaign query is narrowed
#: by them (e_above_hull ranges first: only ML-/DFT-done candidates have one)
