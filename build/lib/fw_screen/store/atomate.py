"""atomate's task database: its db.json beside a LaunchPad file, and the task documents of one candidate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

TASKS_COLLECTION = "tasks"


# ------------------------------------------------------------------------------------- db file
def atomate_db_config(launchpad_file: str) -> dict:
    """atomate's db settings (``VaspCalcDb.from_db_file`` format) for the server and database of a LaunchPad
    file, ``tasks`` collection.  ``mongoclient_kwargs`` (e.g. ``retryWrites: false``) are carried over:
    atomate passes them to ``MongoClient``."""
    with open(os.path.expanduser(launchpad_file)) as fh:
        lp = yaml.safe_load(fh) or {}
    kwargs = dict(lp.get("mongoclient_kwargs") or {})
    database = lp.get("name") or "fireworks"
    host = lp.get("host") or "localhost"
    if lp.get("uri_mode") or str(host).startswith(("mongodb://", "mongodb+srv://")):
        from pymongo.uri_parser import parse_uri

        database = parse_uri(host).get("database") or database
        return {"host_uri": host, "database": database, "collection": TASKS_COLLECTION,
                "mongoclient_kwargs": kwargs}
    cfg = {"host": host, "port": int(lp.get("port") or 27017), "database": database,
           "collection": TASKS_COLLECTION, "mongoclient_kwargs": kwargs,
           # explicit nulls: atomate's default "" would make pymongo attempt authentication
           "admin_user": lp.get("username"), "admin_password": lp.get("password")}
    if lp.get("authsource"):
        cfg["authsource"] = lp["authsource"]
    return cfg


def atomate_db_file(launchpad_file: str, path: str) -> str:
    """Write atomate's db.json for the same server and database as ``launchpad_file``; returns ``path``."""
    cfg = atomate_db_config(launchpad_file)
    path = os.path.expanduser(str(path))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold credentials
    with os.fdopen(fd, "w") as fh:
        json.dump(cfg, fh, indent=1)
    return path


def find_task_docs(db_file: str, candidate_id: str) -> list[dict]:
    """The candidate's documents in the collection atomate's VaspToDb writes to for ``db_file`` (without the
    bulky parts: calcs_reversed is reduced to what an entry needs)."""
    from atomate.vasp.database import VaspCalcDb

    mmdb = VaspCalcDb.from_db_file(db_file, admin=True)
    try:
        return list(mmdb.collection.find(
            {"fw_screen.candidate": candidate_id},
            {"task_id": 1, "task_label": 1, "state": 1, "output": 1, "input": 1, "nsites": 1, "custodian": 1,
             "fw_screen": 1, "calcs_reversed.run_type": 1, "calcs_reversed.input.potcar_spec": 1}))
    finally:
        mmdb.connection.close()
