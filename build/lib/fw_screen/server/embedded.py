"""The embedded database: a SecantusDB server (MongoDB wire protocol, WiredTiger storage) on loopback.

``fw-screen db start`` launches ``secantusd-py`` (through :mod:`fw_screen.server.secantusd`, which makes its
``findAndModify`` atomic) as a daemon with its data, pid file and log under a
project-local state folder (``$FW_SCREEN_HOME``, default ``./.fw-screen``), waits until it answers
``ping``, and writes the files FireWorks needs to use it:

* ``launchpad.yaml``: for ``lpad -l``, ``rlaunch -l``, ``qlaunch -l`` (pymongo settings in ``CLIENT_KWARGS``:
  ``retryWrites: false``, as SecantusDB's retryable-write bookkeeping grows with every write and slows the
  server ~4x over a campaign; ``connectTimeoutMS`` 120 s, as a long query can stall the server's heartbeat
  answers past pymongo's 20 s default);
* ``fworker_cheap.yaml``, ``fworker_ml.yaml``, ``fworker_dft.yaml``, ``fworker_all.yaml``: FWorkers whose
  ``env.db_file`` points the FireTasks at the same database (DFT workers also get ``atomate_db_file``, the
  ``atomate_db.json`` of the VASP path, and pw_cmd / mpi_cmd / pseudo_dir from $FW_SCREEN_PW_CMD,
  $FW_SCREEN_MPI_CMD, $ESPRESSO_PSEUDO when set).

The data directory survives ``stop``/``start``.  Any real MongoDB works instead: write your own LaunchPad
file (see ``launchpad/``) and pass it with ``-l``.

Security: the server binds to 127.0.0.1 unless told otherwise, and a non-loopback address is refused without
authentication.  ``start(auth=True)`` (``fw-screen db start --auth``) provisions a SCRAM-SHA-256 user with a
random password (:mod:`secrets`) on a loopback-only, unauthenticated start, then restarts the server with
``--auth``.  The user may read, write and index any database (FireWorks and fw-screen need no more) but not
manage users or roles (``WORKER_ROLES``): a leaked worker file cannot create accounts or change
permissions.  The password is written only to ``launchpad.yaml`` and ``atomate_db.json`` (mode 0600, in a
0700 state folder); ``auth.json`` remembers that the data folder is authenticated (no secret in it), so a
later start without ``--auth`` keeps authentication on.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

DEFAULT_PORT = 27117
DEFAULT_DB_NAME = "fw_screen"
AUTH_USER = "fw-screen"
AUTH_SOURCE = "admin"
#: pymongo settings of the LaunchPad files written here.  retryWrites: the server's retryable-write bookkeeping
#: grows with every write (benchmarks/bench_retry_writes.py).  connectTimeoutMS is also the timeout of
#: pymongo's heartbeat, which the server can be slow to answer while it runs a long query: at the 20 s default
#: a ~35 s whole-campaign count at 100,000 candidates had its connection interrupted ("operation cancelled")
#: by the client's own monitor (benchmarks/bench_scale.py; seen once more with 150,000 documents).
CLIENT_KWARGS = {"retryWrites": False, "serverSelectionTimeoutMS": 30000, "connectTimeoutMS": 120000}
#: what the LaunchPad user may do: data and indexes of every database, server monitoring (listDatabases,
#: serverStatus); not user/role administration (no userAdmin*, no root)
WORKER_ROLES = ["readWriteAnyDatabase", "dbAdminAnyDatabase", "clusterMonitor"]


class ServerError(RuntimeError):
    pass


def home(path: str | Path | None = None) -> Path:
    """The state folder (absolute), from the argument, ``$FW_SCREEN_HOME``, or ``./.fw-screen``."""
    return Path(path or os.environ.get("FW_SCREEN_HOME") or ".fw-screen").expanduser().resolve()


def launchpad_file(state: str | Path | None = None) -> Path:
    return home(state) / "launchpad.yaml"


def _command() -> list[str]:
    """``secantusd-py`` as :mod:`fw_screen.server.secantusd` runs it (this interpreter, findAndModify made atomic)."""
    if importlib.util.find_spec("secantus") is None:
        raise ServerError("SecantusDB is not installed: pip install secantusdb (make demo / make test do this)")
    return [sys.executable, "-m", "fw_screen.server.secantusd"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited child not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _read_state(state: Path) -> dict | None:
    f = state / "server.json"
    return json.loads(f.read_text()) if f.exists() else None


def ping(host: str, port: int, timeout_ms: int = 1000, credentials: dict | None = None) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    auth = {}
    if credentials:
        auth = {"username": credentials["username"], "password": credentials["password"],
                "authSource": credentials.get("authsource") or AUTH_SOURCE}
    client = MongoClient(host, port, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                         retryWrites=False, **auth)
    try:
        client.admin.command("ping")
        if credentials:  # ping may be allowed before authentication: prove the credentials work
            client.admin.command("listDatabases", nameOnly=True)
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


# ------------------------------------------------------------------------------------ authentication
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_enabled(state: Path) -> bool:
    """Whether this data folder was put under authentication (``auth.json``; it holds no secret)."""
    return (state / "auth.json").exists()


def credentials(state: Path) -> dict | None:
    """The SCRAM user of an authenticated data folder, read from its LaunchPad file; None without auth."""
    if not auth_enabled(state):
        return None
    marker = json.loads((state / "auth.json").read_text())
    try:
        lp = yaml.safe_load((state / "launchpad.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        lp = {}
    if lp.get("username") != marker["username"] or not lp.get("password"):
        raise ServerError(f"{state} holds an authenticated database, but the credentials in "
                          f"{state / 'launchpad.yaml'} are missing; restore that file, or remove "
                          f"{state / 'auth.json'} and run `fw-screen db start --auth` to set a new password")
    return {"username": lp["username"], "password": lp["password"],
            "authsource": lp.get("authsource") or marker.get("authsource") or AUTH_SOURCE}


def _provision_user(host: str, port: int, username: str, password: str) -> None:
    """Create (or reset the password of) the SCRAM user on a server running without --auth."""
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure

    client = MongoClient(host, port, retryWrites=False, serverSelectionTimeoutMS=10000)
    try:
        try:
            client.admin.command("createUser", username, pwd=password, roles=WORKER_ROLES,
                                 mechanisms=["SCRAM-SHA-256"])
        except OperationFailure as exc:
            if "already exists" not in str(exc):
                raise ServerError(f"createUser {username!r} failed (code {exc.code})") from None
            client.admin.command("updateUser", username, pwd=password, roles=WORKER_ROLES)
    finally:
        client.close()


def write_launchpad_files(state: Path, host: str, port: int, name: str = DEFAULT_DB_NAME,
                          creds: dict | None = None) -> Path:
    lp = {"host": host, "port": port, "name": name, "logdir": None, "strm_lvl": "WARNING",
          "mongoclient_kwargs": dict(CLIENT_KWARGS)}
    if creds:
        lp.update({"username": creds["username"], "password": creds["password"],
                   "authsource": creds.get("authsource") or AUTH_SOURCE})
    path = state / "launchpad.yaml"
    _write_private(path, yaml.safe_dump(lp, sort_keys=False))
    from fw_screen.store.atomate import atomate_db_file

    atomate = atomate_db_file(str(path), str(state / "atomate_db.json"))  # the VASP path's task database
    os.chmod(atomate, 0o600)  # holds the credentials too (an older file may predate them)
    for label, categories in (("cheap", ["cheap"]), ("ml", ["ml"]), ("dft", ["dft"]),
                              ("all", ["cheap", "ml", "dft"])):
        env = {"db_file": str(path)}
        if "dft" in categories:  # pw.x / mpirun / pseudopotentials: fw-screen's defaults unless set here
            env["atomate_db_file"] = atomate
            for key, var in (("pw_cmd", "FW_SCREEN_PW_CMD"), ("mpi_cmd", "FW_SCREEN_MPI_CMD"),
                             ("pseudo_dir", "ESPRESSO_PSEUDO")):
                if os.environ.get(var):
                    env[key] = os.environ[var]
        worker = {"name": f"fw-screen-{label}-{socket.gethostname()}", "category": categories,
                  "query": "{}", "env": env}
        _write_private(state / f"fworker_{label}.yaml", yaml.safe_dump(worker, sort_keys=False))
    return path


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (LaunchPad files may hold credentials)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def status(state: str | Path | None = None) -> dict:
    state = home(state)
    info = _read_state(state)
    if not info:
        return {"running": False, "home": str(state), "message": "no embedded server started here",
                "auth": auth_enabled(state)}
    alive = pid_alive(info["pid"])
    answering = alive and ping(info["host"], info["port"], credentials=credentials(state))
    return {**info, "running": alive, "answering": answering, "home": str(state),
            "launchpad": str(state / "launchpad.yaml")}


def _launch(state: Path, host: str, port: int, auth: bool, timeout: float, creds: dict | None,
            extra: tuple[str, ...] = ()):
    """Start secantusd-py (with ``extra`` options) and wait until it answers (with ``creds`` when given);
    returns (process, command)."""
    data = state / "db"
    data.mkdir(exist_ok=True)
    log = open(state / "secantusd.log", "ab")
    cmd = [*_command(), "--host", host, "--port", str(port), "--storage-path", str(data), "--log-level", "WARNING",
           *extra]
    if auth:
        cmd.append("--auth")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"secantusd-py exited with code {proc.returncode}: {_tail(state / 'secantusd.log')}")
        if ping(host, port, timeout_ms=500, credentials=creds):
            return proc, cmd
        time.sleep(0.2)
    proc.kill()
    raise ServerError(f"secantusd-py did not answer within {timeout:.0f} s: {_tail(state / 'secantusd.log')}")


def _terminate(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    proc.terminate()  # secantusd-py checkpoints WiredTiger and exits
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _enable_auth(state: Path, port: int, timeout: float) -> dict:
    """Provision the SCRAM user on a loopback-only start without --auth, stop; returns the credentials."""
    if port_in_use("127.0.0.1", port):
        raise ServerError(f"port {port} on 127.0.0.1 is already in use by another process; "
                          f"choose another with --port")
    creds = {"username": AUTH_USER, "password": secrets.token_urlsafe(24), "authsource": AUTH_SOURCE}
    proc, _ = _launch(state, "127.0.0.1", port, False, timeout, None)
    try:
        _provision_user("127.0.0.1", port, creds["username"], creds["password"])
    finally:
        _terminate(proc)
    return creds


def start(state: str | Path | None = None, port: int = DEFAULT_PORT, host: str = "127.0.0.1",
          timeout: float = 60.0, name: str = DEFAULT_DB_NAME, auth: bool = False) -> dict:
    """Start the embedded server (or report the one already running here).

    ``auth=True`` puts the data folder under SCRAM authentication for good: later starts keep it on
    whatever ``auth`` says.  A non-loopback ``host`` is refused without authentication.
    """
    state = home(state)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)  # data, logs and LaunchPad files: the owner's only
    auth = auth or auth_enabled(state)
    if not auth and not is_loopback(host):
        raise ServerError(f"refusing to bind to {host} without authentication: anyone who can reach it could "
                          f"read and change the database; use --auth, or bind to 127.0.0.1")
    current = _read_state(state)
    if current and pid_alive(current["pid"]):
        if auth and not current.get("auth"):  # running without auth: restart it with authentication
            stop(state)
        else:
            creds = credentials(state)
            if ping(current["host"], current["port"], credentials=creds):
                write_launchpad_files(state, current["host"], current["port"], current.get("name", name), creds)
                out = {**current, "already_running": True, "launchpad": str(state / "launchpad.yaml")}
                if "fw_screen.server.secantusd" not in " ".join(current.get("command") or []):
                    out["warning"] = ("this server was started by an older fw-screen (plain secantusd-py, whose "
                                      "findAndModify can hand two launchers one Launch id): `fw-screen db stop` "
                                      "and start it again")
                return out
            raise ServerError(f"server pid {current['pid']} is alive but not answering on port {current['port']}; "
                              f"see {state / 'secantusd.log'} or run `fw-screen db stop`")
    if port_in_use(host, port):
        raise ServerError(f"port {port} on {host} is already in use by another process; "
                          f"choose another with --port")
    creds = None
    if auth:
        if auth_enabled(state):
            creds = credentials(state)
        else:
            creds = _enable_auth(state, port, timeout)
            # the credentials first (0600), then the marker: a crash in between leaves an unmarked folder
            # whose next `--auth` start resets the password
            write_launchpad_files(state, host, port, name, creds)
            _write_private(state / "auth.json", json.dumps(
                {"username": creds["username"], "authsource": creds["authsource"], "since": time.time()}))
    proc, cmd = _launch(state, host, port, auth, timeout, creds)
    info = {"pid": proc.pid, "host": host, "port": port, "name": name, "data": str(state / "db"),
            "started": time.time(), "command": cmd, "auth": auth}
    (state / "server.json").write_text(json.dumps(info, indent=1))
    (state / "secantusd.pid").write_text(str(proc.pid))
    write_launchpad_files(state, host, port, name, creds)
    return {**info, "already_running": False, "launchpad": str(state / "launchpad.yaml")}


def stop(state: str | Path | None = None, timeout: float = 30.0) -> dict:
    state = home(state)
    info = _read_state(state)
    if not info:
        return {"stopped": False, "message": "no embedded server started here"}
    pid = info["pid"]
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)  # secantusd-py checkpoints WiredTiger and exits
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    for f in ("server.json", "secantusd.pid"):
        (state / f).unlink(missing_ok=True)
    return {"stopped": True, "pid": pid}


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
