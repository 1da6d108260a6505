"""A real one-node SLURM cluster for the tests: Debian's slurm-wlm and munge (``make slurm``), configured for
this host in a temporary folder and started by the test itself; nothing system-wide is used or changed.

:func:`start_cluster` writes ``slurm.conf`` (the node named after ``hostname -s`` with the CPUs and memory
``slurmd -C`` reports, ``proctrack/linuxproc``, ``task/none``, ``select/cons_tres`` by CPU, a free port
pair, state/spool/log folders under the temporary folder, job completions in a text file that ``sacct -c``
reads), creates a munge key and starts its own ``munged`` (own socket, key, pid, seed and log files; slurm
finds that socket through ``AuthInfo``), then ``slurmctld`` and ``slurmd`` in the foreground (``-D``, as
children of the test), and waits until ``sinfo`` shows the node idle.  ``SLURM_CONF`` then points every
child process (``qlaunch``, ``sbatch``, the jobs themselves, which inherit the submitter's environment) at it.
:func:`stop_cluster` cancels every job, stops the daemons and removes the folder.

The fixture :func:`slurm_cluster` (module scope) wraps both; tests import it.  Nothing listens beyond this
machine: the daemons bind their ports on this host, the node's address is 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "sacct", "munged")


def missing_binaries() -> list[str]:
    """The SLURM/munge programs not found (``/usr/sbin`` included: Debian puts the daemons there)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [b for b in BINARIES if shutil.which(b, path=path) is None]
    ldconfig = shutil.which("ldconfig", path=path)
    if ldconfig and "libpmix.so " not in subprocess.run([ldconfig, "-p"], capture_output=True, text=True).stdout:
        missing.append("libpmix.so (libpmix-dev)")  # slurm's mpi/pmix plugin opens it: `srun pw.x` needs it
    return missing


def _which(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _node_line() -> dict:
    """``slurmd -C``'s description of this host: CPUs, sockets, cores, threads, memory."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    fields = dict(item.split("=", 1) for item in out.split("\n")[0].split() if "=" in item)
    fields.pop("NodeName", None)
    fields.pop("UpTime", None)
    return fields


class Cluster:
    """A running one-node cluster: ``conf`` (slurm.conf), ``env`` (what clients need), ``node``, ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "etc" / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        """A SLURM client command (``squeue``, ``scontrol``, ...) against this cluster; its stdout."""
        out = subprocess.run([_which(args[0]), *args[1:]], capture_output=True, text=True, env=self.env,
                             timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {out.returncode}\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False).strip()

    def jobs(self) -> dict[str, str]:
        """``{job id: state}`` of the jobs slurmctld still knows (pending, running and recently ended)."""
        out = self.run("squeue", "-h", "-t", "all", "-o", "%i %T", check=False)
        return dict(line.split() for line in out.splitlines() if line.strip())

    def job(self, job_id: str) -> dict:
        """``scontrol show job`` as a dict (JobState, Reason, ExitCode, RunTime, TimeLimit, StdOut, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id))
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def completions(self) -> dict[str, str]:
        """``{job id: final state}`` from the job completion log (``sacct -c``: there is no slurmdbd)."""
        out = self.run("sacct", "-c", "-n", "-P", "-o", "jobid,state", check=False)
        return dict(line.split("|")[:2] for line in out.splitlines() if "|" in line)

    def wait_idle(self, timeout: float = 600, poll: float = 1.0) -> None:
        """Until no job is pending or running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not [s for s in self.jobs().values() if s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING",
                                                              "SUSPENDED")]:
                return
            time.sleep(poll)
        raise AssertionError(f"jobs still queued after {timeout:.0f} s: {self.jobs()}")

    def log(self, name: str) -> str:
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _write_config(c: Cluster) -> None:
    for sub in ("etc", "state", "spool", "log", "run", "munge"):
        (c.root / sub).mkdir(parents=True, exist_ok=True)
    ctld_port, slurmd_port = _free_ports(2)
    node = _node_line()
    user = "root" if os.geteuid() == 0 else os.environ.get("USER") or subprocess.run(
        ["id", "-un"], capture_output=True, text=True).stdout.strip()
    r = c.root
    c.conf.write_text("\n".join([
        "# written by tests/slurm_cluster.py for one node (this host)",
        "ClusterName=fwscreen",
        f"SlurmctldHost={c.node}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        f"SlurmUser={user}",
        f"SlurmdUser={user}" if os.geteuid() == 0 else "",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={r / 'munge' / 'munge.socket'}",
        f"StateSaveLocation={r / 'state'}",
        f"SlurmdSpoolDir={r / 'spool'}",
        f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        "MpiDefault=pmix",         # plain `srun pw.x` (the guide's mpi_cmd) starts Open MPI ranks through PMIx
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={r / 'log' / 'jobcomp.txt'}",
        "ReturnToService=2",
        "MinJobAge=3600",          # ended jobs stay in squeue/scontrol for the test's checks
        "KillWait=5",              # SIGTERM at the time limit, SIGKILL 5 s later
        "OverTimeLimit=0",
        "InactiveLimit=0",
        "SlurmdTimeout=300",
        "SlurmctldTimeout=120",
        "SchedulerParameters=sched_interval=2",
        f"NodeName={c.node} NodeAddr=127.0.0.1 " + " ".join(f"{k}={v}" for k, v in node.items()) + " State=UNKNOWN",
        f"PartitionName=debug Nodes={c.node} Default=YES MaxTime=INFINITE State=UP",
        ""]))


def _start_munge(c: Cluster) -> None:
    m = c.root / "munge"
    key = m / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    m.chmod(0o700)
    subprocess.run([_which("munged"), "--force", f"--socket={m / 'munge.socket'}", f"--key-file={key}",
                    f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'munged.seed'}",
                    f"--log-file={c.root / 'log' / 'munged.log'}"], check=True, capture_output=True, timeout=30)
    deadline = time.monotonic() + 20
    while not (m / "munge.socket").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _daemon(c: Cluster, name: str, *args: str) -> None:
    log = open(c.root / "log" / f"{name}.out", "ab")
    c.procs[name] = subprocess.Popen([_which(name), "-D", "-f", str(c.conf), *args], env=c.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)


def start_cluster(root: Path, timeout: float = 60) -> Cluster:
    """Configure and start munged, slurmctld and slurmd under ``root``; return once the node is idle."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"SLURM is not installed ({', '.join(missing)} not found): run `make slurm`", pytrace=False)
    c = Cluster(Path(root))
    _write_config(c)
    _start_munge(c)
    _daemon(c, "slurmctld", "-i")
    time.sleep(1)
    _daemon(c, "slurmd")
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        for name, p in c.procs.items():
            if p.poll() is not None:
                stop_cluster(c, remove=False)
                raise RuntimeError(f"{name} exited ({p.returncode}):\n{c.log(name)[-3000:]}")
        state = c.node_state()
        if state == "idle":
            return c
        time.sleep(0.5)
    stop_cluster(c, remove=False)
    raise RuntimeError(f"node {c.node} not idle after {timeout:.0f} s ({state!r}):\n{c.log('slurmctld')[-3000:]}"
                       f"\n{c.log('slurmd')[-3000:]}")


def stop_cluster(c: Cluster, remove: bool = True) -> None:
    """``scancel`` of every job, then the daemons (slurmd, slurmctld, munged) stopped; ``root`` removed."""
    if "slurmctld" in c.procs and c.procs["slurmctld"].poll() is None:
        c.run("scancel", "--full", "-u", "root" if os.geteuid() == 0 else str(os.getuid()), check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and [s for s in c.jobs().values() if s in ("RUNNING", "COMPLETING",
                                                                                       "PENDING")]:
            time.sleep(0.5)
    for name in ("slurmd", "slurmctld"):
        p = c.procs.get(name)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
    pid_file = c.root / "munge" / "munged.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    if remove:
        shutil.rmtree(c.root, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running one-node SLURM cluster for the module's tests; ``SLURM_CONF`` is set for child processes
    while it runs."""
    root = Path(tempfile.mkdtemp(prefix="fws-slurm-"))  # short path: munge's socket path must fit sun_path
    c = start_cluster(root)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(c.conf)
    try:
        yield c
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        stop_cluster(c)
