"""Questions put to the FireWorks LaunchPad's own collections (fireworks, launches, workflows, fws_locks):
which Fireworks are live for a stage, which launches are orphaned, which workflows are locked.
"""

from __future__ import annotations

from typing import Iterable


def prepare_launchpad(launchpad) -> None:
    """Initialise FireWorks' collections on a database that has never held a LaunchPad.

    Only an empty LaunchPad is reset (``lpad reset`` would delete existing workflows).
    """
    if launchpad.fw_id_assigner.find_one({}) is None and launchpad.fireworks.find_one({}) is None:
        launchpad.reset("", require_password=False)


def firework_states(launchpad, campaign: str | None = None) -> dict[str, int]:
    """{FireWorks state: count} of the Fireworks on the LaunchPad (of one campaign: ``spec.campaign``)."""
    match = {"spec.campaign": campaign} if campaign else {}
    return {d["_id"]: d["n"] for d in launchpad.fireworks.aggregate(
        [{"$match": match}, {"$group": {"_id": "$state", "n": {"$sum": 1}}}])}


#: FireWorks states of a Firework that will still run (or runs now)
LIVE_FW_STATES = ("WAITING", "READY", "RESERVED", "RUNNING")


def live_fireworks_for_claim(launchpad, claim: dict) -> list[int]:
    """fw_ids of live Fireworks that hold or will continue a DFT reference claim: the claiming Firework
    (a reference Firework, or a candidate's computing it inline) and continuations of that reference."""
    ors: list[dict] = [{"spec.stage": "dft_reference", "spec.system": claim.get("system"),
                        "spec._tasks.phase.key": claim.get("key")}]
    if claim.get("fw_id") is not None:
        ors.append({"fw_id": claim["fw_id"]})
    return [d["fw_id"] for d in launchpad.fireworks.find({"state": {"$in": list(LIVE_FW_STATES)}, "$or": ors},
                                                         {"fw_id": 1})]


def stage_keys_with_fireworks(launchpad, campaign: str, stage: str, key: str) -> set:
    """Values of ``spec.<key>`` of a campaign's Fireworks of one stage (any state): work already on the LaunchPad."""
    return set(launchpad.fireworks.distinct(f"spec.{key}", {"spec.campaign": campaign, "spec.stage": stage}))


def busy_fireworks(launchpad, campaign: str, stages: list[str]) -> int:
    """How many of a campaign's Fireworks of these stages are RUNNING or RESERVED now."""
    return launchpad.fireworks.count_documents({"spec.campaign": campaign, "spec.stage": {"$in": stages},
                                                "state": {"$in": ["RUNNING", "RESERVED"]}})


def fizzled_fireworks(launchpad, campaign: str | None = None) -> list[dict]:
    """FIZZLED fw-screen Fireworks with the exception of their last launch: [{fw_id, name, error}]."""
    match: dict = {"state": "FIZZLED", "spec.stage": {"$exists": True}}
    if campaign:
        match["spec.campaign"] = campaign
    out = []
    for fw in launchpad.fireworks.find(match, {"fw_id": 1, "name": 1, "launches": 1}):
        launch = launchpad.launches.find_one({"launch_id": {"$in": fw.get("launches") or []}},
                                             {"action.stored_data._exception": 1}, sort=[("launch_id", -1)])
        out.append({"fw_id": fw["fw_id"], "name": fw.get("name"), "error": _launch_error(launch)})
    return out


def _launch_error(launch: dict | None) -> str:
    """The stack trace a Launch document recorded (its task's exception), or ""."""
    exc = (((launch or {}).get("action") or {}).get("stored_data") or {}).get("_exception") or {}
    return exc.get("_stacktrace") or ""


def reserved_without_reservation(launchpad, campaign: str | None = None) -> dict[int, object]:
    """RESERVED Fireworks holding no RESERVED Launch, with their ``updated_on``: {fw_id: updated_on}.

    FireWorks' checkout marks a Firework RESERVED, then stores a RUNNING Launch, then the Firework RUNNING
    with that Launch; a launcher that dies between those writes leaves it RESERVED for good (no FireWorks
    command puts it back: ``detect_lostruns`` looks at RUNNING Fireworks, ``detect_unreserved`` at RESERVED
    Launches).  A ``qlaunch -r`` reservation is RESERVED with a RESERVED Launch of its own: not listed."""
    match: dict = {"state": "RESERVED"}
    if campaign:
        match["spec.campaign"] = campaign
    fws = list(launchpad.fireworks.find(match, {"fw_id": 1, "launches": 1, "updated_on": 1}))
    linked = [lid for fw in fws for lid in fw.get("launches") or []]
    reserved = {d["launch_id"] for d in launchpad.launches.find(
        {"launch_id": {"$in": linked}, "state": "RESERVED"}, {"launch_id": 1})} if linked else set()
    return {fw["fw_id"]: fw.get("updated_on") for fw in fws if not reserved & set(fw.get("launches") or [])}


def unlinked_running_launches(launchpad, fw_id: int) -> list[int]:
    """RUNNING Launches of ``fw_id`` that the Firework does not list (an interrupted checkout stored them)."""
    fw = launchpad.fireworks.find_one({"fw_id": fw_id}, {"launches": 1}) or {}
    return [d["launch_id"] for d in launchpad.launches.find(
        {"fw_id": fw_id, "state": "RUNNING", "launch_id": {"$nin": fw.get("launches") or []}}, {"launch_id": 1})]


def launches_under(launchpad, host: str, launch_root: str, states: Iterable[str]) -> list[dict]:
    """Launches in ``states`` started on ``host`` in a folder under ``launch_root`` (one launcher's):
    [{launch_id, fw_id, state, linked, last, error}]: ``linked`` whether the Firework lists the Launch,
    ``last`` whether it is the Firework's latest, ``error`` the exception the Launch recorded."""
    root = str(launch_root).rstrip("/") + "/"
    launches = [d for d in launchpad.launches.find(
        {"state": {"$in": list(states)}, "host": host},
        {"launch_id": 1, "fw_id": 1, "state": 1, "launch_dir": 1, "action.stored_data._exception._stacktrace": 1})
        if str(d.get("launch_dir", "")).startswith(root)]
    listed = {fw["fw_id"]: fw.get("launches") or [] for fw in launchpad.fireworks.find(
        {"fw_id": {"$in": [d["fw_id"] for d in launches]}}, {"fw_id": 1, "launches": 1})} if launches else {}
    out = []
    for d in launches:
        mine = listed.get(d["fw_id"], [])
        out.append({"launch_id": d["launch_id"], "fw_id": d["fw_id"], "state": d["state"],
                    "linked": d["launch_id"] in mine, "last": bool(mine) and mine[-1] == d["launch_id"],
                    "error": _launch_error(d)})
    return out


def firework_state(launchpad, fw_id: int) -> str | None:
    fw = launchpad.fireworks.find_one({"fw_id": fw_id}, {"state": 1})
    return fw["state"] if fw else None


def locked_workflows(launchpad, fw_ids: Iterable[int] | None = None) -> dict:
    """Workflows holding FireWorks' lock (``locked: true``, set by ``WFLock``): {workflow _id: its fw_ids};
    only those containing one of ``fw_ids`` when given."""
    match: dict = {"locked": True}
    if fw_ids is not None:
        match["nodes"] = {"$in": list(fw_ids)}
    return {d["_id"]: d.get("nodes") or [] for d in launchpad.workflows.find(match, {"nodes": 1})}


def locked_workflow_stamps(launchpad, campaign: str | None = None) -> dict:
    """Locked workflows with their ``updated_on`` ({_id: updated_on}): every completed operation under
    FireWorks' lock rewrites the workflow with a new ``updated_on``, so a lock whose workflow has not changed
    for a long time has no live holder."""
    match: dict = {"locked": True}
    if campaign:
        match["metadata.campaign"] = campaign
    return {d["_id"]: str(d.get("updated_on")) for d in launchpad.workflows.find(match, {"updated_on": 1})}


def unlock_workflows(launchpad, workflow_ids: Iterable) -> int:
    """Remove FireWorks' workflow lock (what ``WFLock`` does on exit, and ``lpad admin unlock``)."""
    return launchpad.workflows.update_many({"_id": {"$in": list(workflow_ids)}, "locked": True},
                                           {"$unset": {"locked": True}}).modified_count


def inconsistent_fireworks(launchpad) -> list[int]:
    """RUNNING Fireworks whose Launch has already COMPLETED or FIZZLED (their workflow refresh never
    happened: FireWorks' own ``detect_lostruns`` test, nothing changed)."""
    return sorted(launchpad.detect_lostruns(expiration_secs=10 ** 9)[2])


def open_launchpad(path: str):
    """The LaunchPad of a LaunchPad file, with fw-screen's indexes in place."""
    from fireworks import LaunchPad

    lp = LaunchPad.from_file(path)
    prepare_launchpad(lp)
    return lp
