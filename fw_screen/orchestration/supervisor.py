"""The launcher supervisor of ``fw-screen run``: N rlaunch workers, and the clean-up after a dead one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from fw_screen.orchestration.launchpad import open_launchpad


class Progress:
    """A progress bar on a terminal (tqdm, on stderr); elsewhere (logs, CI) a plain line every ``every`` s."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", every: float = 30.0):
        self.desc, self.total, self.unit, self.every = desc, total, unit, every
        self.n, self._last = 0, 0.0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc=desc, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update_to(self, n: int, total: int | None = None, postfix: str | None = None) -> None:
        if total is not None:
            self.total = total
        if self.bar is not None:
            if total is not None:
                self.bar.total = total
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n - self.bar.n)
        elif time.monotonic() - self._last >= self.every and n != self.n:
            self._last = time.monotonic()
            of = f"/{self.total}" if self.total else ""
            print(f"  {self.desc}: {n}{of} {self.unit}" + (f" ({postfix})" if postfix else ""), file=sys.stderr,
                  flush=True)
        self.n = n

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def launch_workers(lp_file: str, fworker: str, workers: int, workdir: Path, sleep: int = 2,
                   timeout: int | None = None, progress: bool = False, restarts: int = 3,
                   checkout_grace_s: float = 120.0) -> list[int]:
    """Run ``workers`` rlaunch rapidfire processes until no work is left; returns their exit codes.

    ``progress``: show Fireworks finished / on the LaunchPad while they run (the total grows as stages add
    Fireworks).  ``restarts``: an rlaunch that dies with an error (e.g. its database connection reset while
    the server restarted) is started again, up to this many times in all, in a folder of its own
    (``worker<i>.<k>``); rapidfire exits 0 when no work is left, so a restart costs nothing when the work is
    done.  What a dead launcher leaves behind would keep the others waiting forever (a RUNNING or RESERVED
    Firework whose children wait), so it is put back as soon as the database answers:
    :func:`fw_screen.orchestration.recovery.recover_launcher` for the Launches in its folder, and workflow locks, Fireworks
    RESERVED without any Launch, RUNNING Fireworks whose Launch ended once they have stayed so, unchanged,
    for ``checkout_grace_s`` (:class:`_DeadLauncherCleanup`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rlaunch = Path(sys.executable).parent / "rlaunch"
    cmd = [str(rlaunch if rlaunch.exists() else "rlaunch"), "-s", "-l", lp_file, "-w", fworker, "rapidfire",
           "--sleep", str(sleep)]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def start(d: Path) -> subprocess.Popen:
        d.mkdir(exist_ok=True)
        with open(d / "rlaunch.log", "ab") as log:  # the child keeps its own copy of the handle
            return subprocess.Popen(cmd, cwd=d, stdout=log, stderr=subprocess.STDOUT, env=env)

    folders = [workdir / f"worker{i}" for i in range(workers)]
    procs = [start(d) for d in folders]
    follower, finished = None, threading.Event()
    if progress:
        follower = threading.Thread(target=_follow_fireworks, args=(lp_file, finished), daemon=True)
        follower.start()
    cleanup = _DeadLauncherCleanup(lp_file, checkout_grace_s)
    restarted, rounds = [0] * workers, restarts

    def restart(i: int) -> None:
        restarted[i] += 1
        folders[i] = workdir / f"worker{i}.{restarted[i]}"
        procs[i] = start(folders[i])

    while True:
        put_back_at_start = cleanup.put_back
        codes: list[int | None] = [None] * workers
        while any(c is None for c in codes):
            for i, p in enumerate(procs):
                if codes[i] is None and p.poll() is not None:
                    if p.returncode != 0 and restarts > 0:
                        restarts -= 1
                        cleanup.crashed(folders[i])
                        restart(i)
                        print(f"rlaunch in {cleanup.pending[-1]} exited with code {p.returncode} (see its "
                              f"rlaunch.log); starting it again in {folders[i]}", file=sys.stderr, flush=True)
                    else:
                        codes[i] = p.returncode
            cleanup.tick()
            time.sleep(0.2)
        # the launchers found no work left; if a dead one's Firework had no waiting children they did not
        # wait for it: put it back and go round again.  Also when something was put back while this round's
        # launchers ran: the last of them may have looked for work just before (a loaded node), and exited.
        if rounds == 0 or not (cleanup.settle(folders) or cleanup.put_back > put_back_at_start):
            break
        rounds -= 1
        print("Fireworks of exited launchers put back: starting the launchers again", file=sys.stderr, flush=True)
        for i in range(workers):
            restart(i)
    finished.set()
    if follower is not None:
        follower.join(timeout=10)
    return codes


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _DeadLauncherCleanup:
    """What ``launch_workers`` does, between polls of its launchers, about what a launcher that died or lost
    its connection at the wrong moment leaves behind (each would keep the other launchers waiting forever):

    * the folders of crashed launchers: :func:`fw_screen.orchestration.recovery.recover_launcher` (their RUNNING Launches
      are lost for certain);
    * FireWorks states that only a dead or disconnected process leaves, once seen unchanged in every look for
      ``grace_s`` (FireWorks holds each for milliseconds): a workflow lock on a workflow that has not been
      rewritten meanwhile (every operation under the lock rewrites it; removed), a Firework RESERVED without
      a Launch (:func:`release_checkouts`), a RUNNING Firework whose Launch has ended (refreshed).

    It looks every ``every_s``; while the database is unreachable it waits for the next look."""

    def __init__(self, lp_file: str, grace_s: float, every_s: float = 10.0):
        self.lp_file, self.grace_s, self.every_s = lp_file, grace_s, every_s
        self.pending: list[Path] = []  # folders of exited launchers not cleaned up yet
        self.crashes = 0
        self.watch: dict[str, dict] = {}  # kind -> {key: (stamp, first seen)}
        self.next_t, self.lp, self.put_back = time.monotonic() + every_s, None, 0
        self.next_inconsistent = 0.0

    def crashed(self, folder: Path) -> None:
        self.pending.append(folder)
        self.crashes += 1
        self.next_t = 0.0

    def _stale(self, kind: str, current: dict, now: float) -> list:
        """Keys of ``current`` seen with the same stamp in every look for ``grace_s``."""
        before = self.watch.get(kind, {})
        self.watch[kind] = {k: (v, before[k][1] if k in before and before[k][0] == v else now)
                            for k, v in current.items()}
        return sorted(k for k, (_, first) in self.watch[kind].items() if now - first >= self.grace_s)

    @property
    def watching(self) -> bool:
        return any(self.watch.values())

    def tick(self, force: bool = False) -> None:
        from pymongo.errors import PyMongoError

        from fw_screen.orchestration.launchpad import (
            inconsistent_fireworks,
            locked_workflow_stamps,
            locked_workflows,
            reserved_without_reservation,
            unlock_workflows,
        )
        from fw_screen.orchestration.recovery import (
            recover_launcher,
            refresh_fireworks,
            release_checkouts,
        )

        if not force and time.monotonic() < self.next_t:
            return
        self.next_t = time.monotonic() + self.every_s
        try:
            self.lp = self.lp or open_launchpad(self.lp_file)
            for folder in list(self.pending):
                r = recover_launcher(self.lp, folder)
                if r["postponed"]:
                    continue  # a workflow of its Fireworks is locked: next look
                back = r["lost_fireworks"] + r["fizzled_rerun"] + r["checkouts_released"]
                if back:
                    _say(f"{folder}: lost runs {r['lost_fireworks']}, Fireworks fizzled by the database "
                        f"{r['fizzled_rerun']}, interrupted checkouts {r['checkouts_released']}: put back (READY)")
                self.put_back += len(back)
                self.pending.remove(folder)
            now = time.monotonic()
            stale = self._stale("locks", locked_workflow_stamps(self.lp), now)
            if stale:
                unlock_workflows(self.lp, stale)
                _say(f"workflow locks held for {self.grace_s:.0f} s (their holder died) removed: workflows {stale}")
            stale = self._stale("reserved", reserved_without_reservation(self.lp), now)
            if stale and not locked_workflows(self.lp, stale):
                released = release_checkouts(self.lp, stale)
                self.put_back += len(released)
                _say(f"Fireworks {released} RESERVED without a Launch for {self.grace_s:.0f} s (a launcher died "
                    f"inside FireWorks' checkout): put back (READY)")
            if now >= self.next_inconsistent or force:  # an aggregation over every ended Launch: once a minute
                self.next_inconsistent = now + 60.0
                stale = self._stale("inconsistent", {fw: True for fw in inconsistent_fireworks(self.lp)}, now)
            else:
                stale = []
            if stale and not locked_workflows(self.lp, stale):
                _say(f"RUNNING Fireworks whose Launch ended {self.grace_s:.0f} s ago: workflows refreshed "
                    f"({refresh_fireworks(self.lp, stale)})")
        except PyMongoError as exc:  # the database is away (restart, network): the next look tries again
            _say(f"clean-up after launchers postponed: {type(exc).__name__}: {str(exc)[:200]}")

    def settle(self, folders: list[Path], give_up_s: float = 900.0) -> bool:
        """All launchers have exited: clean up after every one of them (``folders``) and wait for the states
        being watched to clear (put back, or moved on).  True when anything was put back, i.e. there is
        work for another round of launchers."""
        before = self.put_back
        self.pending += [f for f in folders if f not in self.pending]
        deadline = time.monotonic() + max(give_up_s, 2 * self.grace_s)
        self.tick(force=True)
        while (self.pending or self.watching) and time.monotonic() < deadline:
            time.sleep(max(0.0, self.next_t - time.monotonic()))
            self.tick()
        if self.pending or self.watching:
            _say(f"gave up cleaning up after exited launchers: folders {[str(f) for f in self.pending]}, "
                f"{ {k: sorted(v) for k, v in self.watch.items() if v} }; run `fw-screen recover` "
                f"(and `lpad admin unlock` for a workflow lock nobody holds)")
            self.pending = []
        return self.put_back > before


def _follow_fireworks(lp_file: str, finished, poll_s: float = 2.0) -> None:
    from pymongo.errors import PyMongoError

    from fw_screen.orchestration.launchpad import firework_states

    lp = open_launchpad(lp_file)
    bar = Progress("Fireworks", unit="FW", every=60)
    try:
        while not finished.is_set():
            try:
                states = firework_states(lp)
            except PyMongoError:  # the database is away for a while: the launchers wait, so does the bar
                finished.wait(poll_s)
                continue
            done = sum(states.get(k, 0) for k in ("COMPLETED", "FIZZLED", "DEFUSED"))
            bar.update_to(done, total=sum(states.values()),
                          postfix=f"running {states.get('RUNNING', 0)}, fizzled {states.get('FIZZLED', 0)}")
            finished.wait(poll_s)
    finally:
        bar.close()
