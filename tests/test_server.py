"""The embedded SecantusDB server as `fw-screen db start|stop|status` runs it: real process, real TCP."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pymongo
import pytest
import yaml

from fw_screen import server
from tests.conftest import free_port


def test_start_status_stop_restart_keeps_data(tmp_path):
    home = tmp_path / "home"
    port = free_port()
    info = server.start(home, port=port)
    try:
        assert info["already_running"] is False
        assert server.status(home)["answering"] is True
        # a second start finds the running server instead of starting another
        assert server.start(home, port=port)["already_running"] is True
        client = pymongo.MongoClient("127.0.0.1", port, retryWrites=False)
        client.fw_screen.things.insert_one({"_id": "kept", "x": 1})
        client.close()
    finally:
        server.stop(home)
    assert server.status(home)["running"] is False
    assert not server.port_in_use("127.0.0.1", port)

    server.start(home, port=port)
    try:
        client = pymongo.MongoClient("127.0.0.1", port, retryWrites=False)
        assert client.fw_screen.things.find_one({"_id": "kept"})["x"] == 1  # WiredTiger data survived
        client.close()
    finally:
        server.stop(home)


def test_refuses_a_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(server.ServerError, match=f"port {port}.*in use"):
            server.start(tmp_path / "home", port=port)
    assert not (tmp_path / "home" / "server.json").exists()


def test_launchpad_and_fworker_files(db_server):
    home = db_server["home"]
    lp_path = home / "launchpad.yaml"
    mode = stat.S_IMODE(os.stat(lp_path).st_mode)
    assert mode == 0o600, oct(mode)
    lp = yaml.safe_load(lp_path.read_text())
    assert lp["port"] == db_server["port"] and lp["host"] == "127.0.0.1"
    assert lp["mongoclient_kwargs"]["retryWrites"] is False
    for label, cats in (("cheap", ["cheap"]), ("ml", ["ml"]), ("dft", ["dft"])):
        worker = yaml.safe_load((home / f"fworker_{label}.yaml").read_text())
        assert worker["category"] == cats
        assert worker["env"]["db_file"] == str(lp_path)
    # plain FireWorks tooling works against it
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "lpad"), "-l", str(lp_path),
                          "get_fws", "-d", "count"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_cli_db_status_and_stop(tmp_path):
    home = tmp_path / "h"
    exe = os.path.join(os.path.dirname(sys.executable), "fw-screen")
    port = str(free_port())
    started = subprocess.run([exe, "--home", str(home), "db", "start", "--port", port], capture_output=True,
                             text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        st = subprocess.run([exe, "--home", str(home), "db", "status"], capture_output=True, text=True, timeout=60)
        assert st.returncode == 0 and port in st.stdout
    finally:
        stop = subprocess.run([exe, "--home", str(home), "db", "stop"], capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0
    st = subprocess.run([exe, "--home", str(home), "db", "status"], capture_output=True, text=True, timeout=60)
    assert st.returncode == 3
