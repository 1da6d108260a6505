"""Recovery: what a killed worker, a lost database connection or a stale lock leaves in the LaunchPad and
the store, and how ``fw-screen recover`` puts it right.
"""

from __future__ import annotations

from pathlib import Path

from fireworks import Workflow

from fw_screen.orchestration.fireworks import (
    dft_workflow,
    ml_fireworks,
    promoted_without_dft_fireworks,
)

#: what makes a FIZZLED Firework an infrastructure casualty (the database went away mid-run), not a bug
DATABASE_ERRORS = ("pymongo.errors", "ServerSelectionTimeoutError", "AutoReconnect", "NetworkTimeout",
                   "ConnectionFailure")


#: a Firework RESERVED this long without a Launch of its own was left by a checkout that died (FireWorks'
#: checkout is a few writes milliseconds apart; a server blocked by a long query can stretch it to a minute)
CHECKOUT_GRACE_S = 300.0
#: how long ``recover`` watches a locked workflow (only when one is locked) before calling the lock stale
LOCK_WAIT_S = 30.0


def died_of_database(error: str) -> bool:
    """Whether a Launch's recorded exception is a database error (the server went away mid-run)."""
    return any(e in error for e in DATABASE_ERRORS)


def _age_s(stamp, now) -> float:
    """Seconds since a FireWorks ``updated_on`` (a datetime or an ISO string, naive means UTC)."""
    import datetime as dt

    if isinstance(stamp, str):
        try:
            stamp = dt.datetime.fromisoformat(stamp)
        except ValueError:
            return 0.0
    if not isinstance(stamp, dt.datetime):
        return 0.0
    return (now - (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc))).total_seconds()


def interrupted_checkouts(launchpad, campaign: str | None = None, grace_s: float = CHECKOUT_GRACE_S) -> list[int]:
    """Fireworks left RESERVED by a launcher that died inside FireWorks' checkout, ``grace_s`` ago or more
    (see :func:`fw_screen.orchestration.launchpad.reserved_without_reservation`)."""
    import datetime as dt

    from fw_screen.orchestration.launchpad import reserved_without_reservation

    now = dt.datetime.now(dt.timezone.utc)
    return sorted(fw_id for fw_id, stamp in reserved_without_reservation(launchpad, campaign).items()
                  if _age_s(stamp, now) >= grace_s)


def release_checkouts(launchpad, fw_ids: list[int]) -> list[int]:
    """Put Fireworks an interrupted checkout left RESERVED back to READY (FireWorks' ``rerun_fw``, as
    ``cancel_reservation`` does); a RUNNING Launch the checkout stored without listing it on the Firework
    is marked FIZZLED, so no Launch claims to run them.  Returns the Fireworks put back."""
    from fw_screen.orchestration.launchpad import (
        reserved_without_reservation,
        unlinked_running_launches,
    )

    still = reserved_without_reservation(launchpad)
    done = []
    for fw_id in fw_ids:
        if fw_id not in still:
            continue  # finished its checkout after all, or someone else put it back
        for launch_id in unlinked_running_launches(launchpad, fw_id):
            launchpad.mark_fizzled(launch_id)
        launchpad.rerun_fw(fw_id)
        done.append(fw_id)
    return done


def refresh_fireworks(launchpad, fw_ids: list[int]) -> list[int]:
    """Refresh the workflows of RUNNING Fireworks whose Launch already ended (FireWorks'
    ``detect_lostruns(refresh=True)`` restricted to ``fw_ids``); returns those it refreshed."""
    if not fw_ids:
        return []
    return sorted(launchpad.detect_lostruns(expiration_secs=10 ** 9, refresh=True,
                                            query={"fw_id": {"$in": list(fw_ids)}})[2])


def recover_launcher(launchpad, launch_root: str | Path, host: str | None = None) -> dict:
    """Put back the Fireworks of one launcher whose process has exited (``fw-screen run`` calls this for a
    crashed rlaunch, and for every launcher once they have all stopped); its Launches are found by their
    folder (under ``launch_root``) and host.  Nothing here waits for a ping to expire: the process is gone.

    * a Launch still RUNNING that its Firework lists: a lost run, through FireWorks' own
      ``detect_lostruns(rerun=True)``; if FireWorks had already fizzled the Firework on the way down (a failed
      workflow refresh does that), it is rerun;
    * a RUNNING Launch its Firework does not list: an interrupted checkout (:func:`release_checkouts`);
    * the Firework's latest Launch FIZZLED by a database error (the connection went with the server): rerun.

    While one of those Fireworks' workflows is locked (FireWorks' ``WFLock``, which a launcher dying at the
    wrong moment leaves behind) nothing is done and ``postponed`` lists them: ask again later.
    """
    import socket

    from fw_screen.orchestration.launchpad import (
        firework_state,
        launches_under,
        locked_workflows,
    )

    launches = launches_under(launchpad, host or socket.gethostname(), str(Path(launch_root).resolve()),
                              ["RUNNING", "FIZZLED"])
    fw_ids = {d["fw_id"] for d in launches}
    locked = locked_workflows(launchpad, fw_ids)
    if locked:  # the dead launcher may have died holding it: FireWorks would wait WFLOCK_EXPIRATION_SECS, then fail
        return {"lost_fireworks": [], "fizzled_rerun": [], "checkouts_released": [],
                "postponed": sorted(fw_ids & {fw for nodes in locked.values() for fw in nodes})}
    running = [d for d in launches if d["state"] == "RUNNING"]
    linked = [d["launch_id"] for d in running if d["linked"]]
    lost_fws: list = []
    if linked:
        _, lost_fws, _ = launchpad.detect_lostruns(expiration_secs=0, rerun=True, refresh=True,
                                                   launch_query={"launch_id": {"$in": linked}})
    casualties = {d["fw_id"] for d in running if d["linked"] and d["fw_id"] not in lost_fws}
    casualties |= {d["fw_id"] for d in launches if d["state"] == "FIZZLED" and d["last"]
                   and died_of_database(d["error"])}
    rerun = []
    for fw_id in sorted(casualties):
        if firework_state(launchpad, fw_id) == "FIZZLED":
            launchpad.rerun_fw(fw_id)
            rerun.append(fw_id)
    released = release_checkouts(launchpad, sorted({d["fw_id"] for d in running if not d["linked"]}))
    return {"lost_fireworks": sorted(lost_fws), "fizzled_rerun": rerun, "checkouts_released": released,
            "postponed": []}


def stale_workflow_locks(launchpad, campaign: str | None = None, wait_s: float = LOCK_WAIT_S) -> list:
    """Workflows locked (FireWorks' ``WFLock``) by no live process: locked, and not rewritten, both now and
    ``wait_s`` later (an operation under the lock takes milliseconds and rewrites the workflow); waits only
    when something is locked."""
    import time

    from fw_screen.orchestration.launchpad import locked_workflow_stamps

    first = locked_workflow_stamps(launchpad, campaign)
    if not first:
        return []
    time.sleep(wait_s)
    second = locked_workflow_stamps(launchpad, campaign)
    return sorted((w for w, stamp in first.items() if second.get(w) == stamp), key=str)


def recover(launchpad, store, campaign: str | None = None, expiration_secs: float | None = None,
            dry_run: bool = False, rerun_fizzled: bool = False, checkout_grace_s: float | None = CHECKOUT_GRACE_S,
            lock_wait_s: float | None = LOCK_WAIT_S) -> dict:
    """``fw-screen recover``: put the work of dead launchers back on the LaunchPad.

    * RUNNING Fireworks whose launcher stopped pinging for ``expiration_secs`` (default FireWorks'
      ``RUN_EXPIRATION_SECS``): FireWorks' own ``detect_lostruns(rerun=True)`` fizzles their launch and
      makes them READY again;
    * workflow locks nobody holds (:func:`stale_workflow_locks`, watched for ``lock_wait_s``) are removed
      first: FireWorks' own rerun would wait for them and fail;
    * Fireworks RESERVED for ``checkout_grace_s`` without a Launch of their own: a launcher died inside
      FireWorks' checkout (:func:`interrupted_checkouts`); they are made READY again;
    * FIZZLED Fireworks that died of a database error (server restarted or unreachable mid-run) or with no
      exception recorded (their launcher died) are rerun; with ``rerun_fizzled`` every FIZZLED fw-screen
      Firework is (:func:`rerun_fizzled_fireworks`);
    * ``running`` DFT reference claims that no live Firework holds or continues are released (the next
      Firework needing the reference computes it; a rerun of the claiming Firework retakes its own claim;
      :func:`release_dead_claims`);
    * Fireworks a dead task never added are added (:func:`add_missing_fireworks`);
    * uniqueness / promotion leases held by a process of this host that no longer exists are released
      (elsewhere a lease expires by itself after its ``lease_s``; :func:`release_dead_leases`);
    * funnel-counter entries a writer left between its steps (older than
      :data:`fw_screen.store.counters.STALE_TOKEN_S`) are applied, once (``ResultsStore.finish_tallies``).

    ``None`` for ``checkout_grace_s`` / ``lock_wait_s`` means the default (:data:`CHECKOUT_GRACE_S`,
    :data:`LOCK_WAIT_S`).  Stage runners only move candidates still in the status they expect
    (``ResultsStore.transition``), so a rerun processes what the dead run left pending and nothing twice.
    Returns what was found and done.
    """
    from fireworks.fw_config import RUN_EXPIRATION_SECS

    from fw_screen.orchestration.launchpad import unlock_workflows

    expiration_secs = RUN_EXPIRATION_SECS if expiration_secs is None else expiration_secs
    checkout_grace_s = CHECKOUT_GRACE_S if checkout_grace_s is None else checkout_grace_s
    lock_wait_s = LOCK_WAIT_S if lock_wait_s is None else lock_wait_s
    query = {"spec.campaign": campaign} if campaign else None
    locks = stale_workflow_locks(launchpad, campaign, lock_wait_s)
    if locks and not dry_run:
        unlock_workflows(launchpad, locks)
    lost_launches, lost_fws, inconsistent = launchpad.detect_lostruns(
        expiration_secs=expiration_secs, rerun=not dry_run, refresh=not dry_run, query=query)
    out: dict = {"dry_run": dry_run, "expiration_secs": expiration_secs, "lost_fireworks": sorted(lost_fws),
                 "lost_launches": sorted(lost_launches), "inconsistent_fireworks": sorted(inconsistent),
                 "fizzled_rerun": [], "fizzled_left": [], "claims_released": [], "claims_live": [],
                 "locks_released": [], "locks_held": []}
    out["lock_wait_s"], out["locks_removed"] = lock_wait_s, [str(w) for w in locks]
    stuck = interrupted_checkouts(launchpad, campaign, checkout_grace_s)
    out["checkout_grace_s"] = checkout_grace_s
    out["checkouts_released"] = stuck if dry_run else release_checkouts(launchpad, stuck)
    out.update(rerun_fizzled_fireworks(launchpad, campaign, rerun_fizzled, dry_run))
    out.update(release_dead_claims(launchpad, store, expiration_secs, dry_run))
    out.update(add_missing_fireworks(launchpad, store, campaign, dry_run))
    out.update(release_dead_leases(store, dry_run))
    out["tallies"] = store.finish_tallies(dry_run=dry_run)
    return out


def rerun_fizzled_fireworks(launchpad, campaign: str | None = None, rerun_all: bool = False,
                            dry_run: bool = False) -> dict:
    """Rerun the FIZZLED fw-screen Fireworks that died of a database error or with no exception recorded (the
    launch was fizzled for its launcher, a lost run, not by the task); every one with ``rerun_all``.
    Returns ``fizzled_rerun`` and ``fizzled_left`` (their fw_ids)."""
    from fw_screen.orchestration.launchpad import fizzled_fireworks

    out: dict = {"fizzled_rerun": [], "fizzled_left": []}
    for fw in fizzled_fireworks(launchpad, campaign):
        if rerun_all or not fw["error"] or died_of_database(fw["error"]):
            if not dry_run:
                launchpad.rerun_fw(fw["fw_id"])
            out["fizzled_rerun"].append(fw["fw_id"])
        else:
            out["fizzled_left"].append(fw["fw_id"])
    return out


def release_dead_claims(launchpad, store, expiration_secs: float, dry_run: bool = False) -> dict:
    """Release the ``running`` DFT reference claims no live Firework holds or continues (a claim without
    fw_id younger than ``expiration_secs`` counts as live).  Returns ``claims_released`` (their ids) and
    ``claims_live`` (``{ref_id, fireworks}`` of the others)."""
    import datetime as dt

    from fw_screen.orchestration.launchpad import live_fireworks_for_claim

    out: dict = {"claims_released": [], "claims_live": []}
    now = dt.datetime.now(dt.timezone.utc)
    for claim in store.running_dft_references():
        live = live_fireworks_for_claim(launchpad, claim)
        claimed = claim["claimed"].replace(tzinfo=claim["claimed"].tzinfo or dt.timezone.utc)
        if not live and claim.get("fw_id") is None and (now - claimed).total_seconds() < expiration_secs:
            live = ["unknown (a claim without fw_id, younger than the expiration)"]
        if live:
            out["claims_live"].append({"ref_id": claim["_id"], "fireworks": live})
            continue
        if dry_run or store.release_dft_reference(
                claim["_id"], claim["claimed"], f"no live Firework holds it (claimed by fw {claim.get('fw_id')})"):
            out["claims_released"].append(claim["_id"])
    return out


def add_missing_fireworks(launchpad, store, campaign: str | None = None, dry_run: bool = False) -> dict:
    """Add the Fireworks a dead task never added, for ``campaign`` or every campaign.

    A launcher that died after its task wrote the verdicts but before FireWorks stored the Fireworks the
    task added (ML Fireworks of a uniqueness shard, DFT Fireworks of the last ML batch): the rerun finds
    nothing pending and adds nothing, so the orphans get their Fireworks here (not while a uniqueness or
    stability Firework of the campaign is busy: a live task may be about to add them).  Returns
    ``ml_batches_added`` and ``dft_candidates_added``.
    """
    from fw_screen.orchestration.launchpad import (
        busy_fireworks,
        stage_keys_with_fireworks,
    )

    out: dict = {"ml_batches_added": [], "dft_candidates_added": []}
    for name in [campaign] if campaign else store.campaign_names():
        spec = store.campaign_spec(name)
        if busy_fireworks(launchpad, name, ["uniqueness", "stability"]):
            continue  # a live task may be about to add its Fireworks
        orphans = sorted(store.pending_ml_batches(name) - stage_keys_with_fireworks(launchpad, name, "stability",
                                                                                      "ml_batch"))
        if orphans and not dry_run:
            launchpad.add_wf(Workflow(ml_fireworks(name, orphans, spec), name=f"fw-screen {name} ML (recovered)",
                                      metadata={"campaign": name}))
        out["ml_batches_added"] += orphans
        todo = promoted_without_dft_fireworks(launchpad, store, name)
        if todo and not dry_run:
            wf = dft_workflow(store, todo)
            if wf is not None:
                launchpad.add_wf(wf)
        out["dft_candidates_added"] += todo
    return out


def release_dead_leases(store, dry_run: bool = False) -> dict:
    """Release the uniqueness / promotion leases held by a process of this host that no longer exists.
    Returns ``locks_released`` (their ids) and ``locks_held`` (``{lock, owner, expires}`` of the others)."""
    import socket

    from fw_screen.server.embedded import pid_alive

    out: dict = {"locks_released": [], "locks_held": []}
    host = socket.gethostname()
    for lock in store.held_locks():
        owner_host, _, rest = str(lock["owner"]).partition(":")
        pid = rest.split(":")[0]
        if owner_host == host and pid.isdigit() and not pid_alive(int(pid)):
            if not dry_run:
                store.release_lock(lock["_id"], lock["owner"])
            out["locks_released"].append(lock["_id"])
        else:
            out["locks_held"].append({"lock": lock["_id"], "owner": lock["owner"], "expires": str(lock.get("expires"))})
    return out


def format_recovery(r: dict) -> str:
    """What ``fw-screen recover`` found and did, one line per kind of leftover."""
    verb = "would" if r["dry_run"] else "did"
    return "\n".join([
        f"lost runs (RUNNING, no ping for {r['expiration_secs']:.0f} s): {len(r['lost_fireworks'])} Firework(s) "
        f"{r['lost_fireworks']} -> {'would be ' if r['dry_run'] else ''}rerun (READY)",
        f"workflow locks nobody holds (unchanged for {r['lock_wait_s']:.0f} s): {len(r['locks_removed'])} "
        f"({verb} remove)",
        f"interrupted checkouts (RESERVED without a Launch for {r['checkout_grace_s']:.0f} s): "
        f"{len(r['checkouts_released'])} {r['checkouts_released']} ({verb} rerun)",
        f"FIZZLED by database errors or dead launchers: {len(r['fizzled_rerun'])} {r['fizzled_rerun']} ({verb} rerun); "
        f"other FIZZLED left alone: {r['fizzled_left']}",
        f"DFT reference claims of dead runs: {len(r['claims_released'])} {r['claims_released']} ({verb} release); "
        f"still held by live Fireworks: {len(r['claims_live'])}",
        f"ML batches without a Firework: {len(r['ml_batches_added'])} ({verb} add); promoted candidates without "
        f"a DFT Firework: {len(r['dft_candidates_added'])} ({verb} add)",
        f"leases of dead processes: {len(r['locks_released'])} {r['locks_released']} ({verb} release); "
        f"other leases held: {len(r['locks_held'])}",
        f"funnel-counter writes left unfinished: {r['tallies']['tokens']} ({verb} finish)",
    ])
