"""Write the LaunchPad and FWorker files of a containerised worker from its environment (docker/entrypoint.sh).

The files are the ones ``fw-screen db start`` writes, by the same function
(:func:`fw_screen.server.embedded.write_launchpad_files`): ``launchpad.yaml`` (mode 600), ``fworker_{cheap,ml,dft,all}.yaml``
whose ``env.db_file`` names that LaunchPad file (DFT ones also get ``atomate_db_file`` and pw_cmd / mpi_cmd /
pseudo_dir from $FW_SCREEN_PW_CMD / $FW_SCREEN_MPI_CMD / $ESPRESSO_PSEUDO), and ``atomate_db.json``.  This script
adds what a server with accounts needs: the username, the password and the authentication database.

Environment:

* ``FW_SCREEN_CONFIG_DIR``: where the files go (default ``~/config``);
* ``FW_SCREEN_DB_HOST`` (default ``mongo``), ``FW_SCREEN_DB_PORT`` (27017), ``FW_SCREEN_DB_NAME`` (fw_screen);
* ``FW_SCREEN_DB_USERNAME``; the password from the file ``FW_SCREEN_DB_PASSWORD_FILE`` (a compose secret) or
  else ``FW_SCREEN_DB_PASSWORD``; ``FW_SCREEN_DB_AUTHSOURCE`` (default ``admin`` when a username is given);
* ``FW_SCREEN_LAUNCHPAD``: a LaunchPad file of your own (URI, replica set, TLS) used as it is instead of the
  variables above;
* ``FW_SCREEN_CATEGORY``: cheap | ml | dft | all, only to check the pseudopotential folder of DFT workers.

``--init`` then initialises the database the way fw-screen does on first use: FireWorks' collections on an
empty LaunchPad (never ``lpad reset`` of one that holds workflows) and the indexes of fw-screen's collections.

Nothing here prints the password.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from fw_screen.server import embedded as server
from fw_screen.store.atomate import atomate_db_file

CATEGORIES = ("cheap", "ml", "dft", "all")


class ConfigError(RuntimeError):
    pass


def _log(message: str) -> None:
    print(f"fw-screen worker: {message}", file=sys.stderr, flush=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def password_from_env(env: dict) -> str | None:
    """The password: the first line of $FW_SCREEN_DB_PASSWORD_FILE, else $FW_SCREEN_DB_PASSWORD, else None."""
    path = env.get("FW_SCREEN_DB_PASSWORD_FILE")
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the password file {path}: {exc.strerror}") from None
        password = text.splitlines()[0].strip() if text.strip() else ""
        if not password:
            raise ConfigError(f"the password file {path} is empty")
        return password
    return env.get("FW_SCREEN_DB_PASSWORD") or None


def launchpad_settings(env: dict) -> tuple[str, int, str]:
    host = env.get("FW_SCREEN_DB_HOST") or "mongo"
    try:
        port = int(env.get("FW_SCREEN_DB_PORT") or 27017)
    except ValueError:
        raise ConfigError(f"FW_SCREEN_DB_PORT is not a port number: {env['FW_SCREEN_DB_PORT']!r}") from None
    return host, port, env.get("FW_SCREEN_DB_NAME") or server.DEFAULT_DB_NAME


def write_config(env: dict) -> Path:
    """Write the LaunchPad, FWorker and atomate files into $FW_SCREEN_CONFIG_DIR; returns the LaunchPad file."""
    state = Path(env.get("FW_SCREEN_CONFIG_DIR") or "~/config").expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    host, port, name = launchpad_settings(env)
    lp_path = server.write_launchpad_files(state, host, port, name)  # LaunchPad, FWorkers, atomate_db.json
    own = env.get("FW_SCREEN_LAUNCHPAD")
    if own:
        try:
            lp = yaml.safe_load(Path(own).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read FW_SCREEN_LAUNCHPAD {own}: {exc.strerror}") from None
        where = f"the LaunchPad file {own}"
    else:
        lp = yaml.safe_load(lp_path.read_text())
        lp["strm_lvl"] = env.get("FW_SCREEN_LOG_LEVEL") or "INFO"
        username = env.get("FW_SCREEN_DB_USERNAME")
        password = password_from_env(env)
        if password and not username:
            raise ConfigError("a database password is set but FW_SCREEN_DB_USERNAME is not")
        if username:
            if not password:
                raise ConfigError(f"FW_SCREEN_DB_USERNAME={username} needs a password: "
                                  "FW_SCREEN_DB_PASSWORD_FILE (a file) or FW_SCREEN_DB_PASSWORD")
            lp.update(username=username, password=password,
                      authsource=env.get("FW_SCREEN_DB_AUTHSOURCE") or "admin")
        who = f"user {username} (authsource {lp['authsource']})" if username else "no authentication"
        where = f"{host}:{port}, database {name}, {who}"
    _write_private(lp_path, yaml.safe_dump(lp, sort_keys=False))
    atomate_db_file(str(lp_path), str(state / "atomate_db.json"))  # again: now with the credentials
    _log(f"LaunchPad {lp_path} -> {where}")
    _check_pseudo(env)
    return lp_path


def _check_pseudo(env: dict) -> None:
    if env.get("FW_SCREEN_CATEGORY", "all") not in ("dft", "all"):
        return
    folder = env.get("ESPRESSO_PSEUDO")
    if not folder:
        return
    path = Path(folder)
    if not path.is_dir() or not any(p.suffix.lower() == ".upf" for p in path.iterdir()):
        _log(f"warning: ESPRESSO_PSEUDO={folder} holds no .UPF files: mount your pseudopotential folder there "
             "(DFT Fireworks would fail with the missing elements named)")


def initialise(lp_path: Path, attempts: int = 10, wait_s: float = 3.0) -> str:
    """Initialise an empty LaunchPad and fw-screen's indexes; returns a one-line summary."""
    from fireworks import LaunchPad
    from pymongo.errors import ConnectionFailure, OperationFailure

    from fw_screen.store import ResultsStore
    from fw_screen.orchestration.launchpad import prepare_launchpad

    lp = LaunchPad.from_file(str(lp_path))
    for attempt in range(1, attempts + 1):
        try:
            prepare_launchpad(lp)
            break
        except ConnectionFailure as exc:  # the server is still starting (compose's healthcheck makes this rare)
            if attempt == attempts:
                raise ConfigError(f"database not reachable: {type(exc).__name__}") from None
            time.sleep(wait_s)
        except OperationFailure as exc:  # e.g. authentication failed: wrong user, password or authsource
            raise ConfigError(f"database refused the LaunchPad's credentials or commands: {exc.code} "
                              f"{exc.details.get('codeName') if exc.details else ''}".rstrip()) from None
    ResultsStore.from_launchpad(lp).ensure_indexes()
    n = lp.workflows.count_documents({})
    lp.connection.close()
    return f"database {lp.name} ready: {n} workflows on the LaunchPad"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--init", action="store_true", help="also initialise the database (idempotent)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    category = env.get("FW_SCREEN_CATEGORY", "all")
    try:
        if category not in CATEGORIES:
            raise ConfigError(f"FW_SCREEN_CATEGORY must be one of {', '.join(CATEGORIES)}, not {category!r}")
        lp_path = write_config(env)
        if args.init:
            _log(initialise(lp_path))
    except ConfigError as exc:
        _log(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
