"""Shared fixtures: one real SecantusDB server over TCP for the session, a fresh database per test."""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per process, as the worker supervisor gives every rlaunch it starts, so that the
# potentials run here as they run in workers (set before numpy/torch load; a value in the environment wins).
# On the 2-core machine the suite's wall time was the same either way (benchmarks/results/test_time.txt).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import socket  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from fw_screen.server import embedded as server  # noqa: E402
from fw_screen.spec import load_spec  # noqa: E402

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
EXAMPLES = REPO / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def db_server(tmp_path_factory):
    """The embedded server, started and stopped the way `fw-screen db start|stop` does it."""
    home = tmp_path_factory.mktemp("fws-home")
    info = server.start(home, port=free_port())
    yield {**info, "home": home}
    server.stop(home)


@pytest.fixture(scope="session")
def new_launchpad_file(db_server):
    """``make(folder)``: write ``folder/launchpad.yaml`` on a new database of the session's server (for
    fixtures of any scope)."""
    def make(folder: Path) -> Path:
        path = Path(folder) / "launchpad.yaml"
        path.write_text(yaml.safe_dump({
            "host": db_server["host"], "port": db_server["port"], "name": f"t_{uuid.uuid4().hex[:10]}",
            "strm_lvl": "WARNING", "mongoclient_kwargs": {"retryWrites": False}}))
        return path

    return make


@pytest.fixture
def launchpad_file(new_launchpad_file, tmp_path) -> Path:
    """A LaunchPad file on a database of its own (name unique to the test)."""
    return new_launchpad_file(tmp_path)


@pytest.fixture
def launchpad(launchpad_file):
    from fireworks import LaunchPad

    from fw_screen.orchestration.launchpad import prepare_launchpad

    lp = LaunchPad.from_file(str(launchpad_file))
    prepare_launchpad(lp)
    yield lp
    lp.connection.drop_database(lp.name)


@pytest.fixture
def store(launchpad):
    from fw_screen.store import ResultsStore

    return ResultsStore.from_launchpad(launchpad)


@pytest.fixture
def spec():
    return load_spec(campaign="test", batch_size=10, dedup_shards=2)


def fworker_file(tmp_path: Path, launchpad_file: Path, categories: list[str], **env) -> str:
    """An FWorker file for ``categories`` whose FireTasks use ``launchpad_file`` (plus ``env`` entries)."""
    path = tmp_path / f"fworker_{'_'.join(categories)}.yaml"
    path.write_text(yaml.safe_dump({"name": "-".join(categories), "category": categories, "query": "{}",
                                    "env": {"db_file": str(launchpad_file), **env}}))
    return str(path)


def generations_table(folder: Path, n: int, seed: int, repeats: int) -> Path:
    """``n`` seeded CrystaLLM-pi generations of ``examples/`` plus their first ``repeats`` rows again (so
    duplicates exist), as a parquet file in ``folder``."""
    import pandas as pd

    df = pd.read_parquet(EXAMPLES / "crystallm_pi_generated_8k.parquet").sample(n, random_state=seed)
    df = pd.concat([df, df.iloc[:repeats]], ignore_index=True)
    path = Path(folder) / f"gen{n + repeats}.parquet"
    df.to_parquet(path)
    return path


def novel_ml_rows(launchpad, launchpad_file: Path, store, spec: dict, tmp_path: Path) -> None:
    """MP references of Li-Co-Ni-O and Na-Fe-P-O, the four ML fixture rows submitted and taken through the
    cheap stages by one cheap worker: they end novel, with ML Fireworks waiting."""
    from fw_screen.stages import load_references
    from fw_screen.orchestration.supervisor import launch_workers
    from fw_screen.orchestration.fireworks import submit

    for f in ("mp_Li-Co-Ni-O.json.gz", "mp_Na-Fe-P-O.json.gz"):
        load_references(store, EXAMPLES / f)
    summary, _ = submit(launchpad, store, DATA / "crystallm_pi_ml_rows.parquet", spec)
    assert summary["new"] == 4
    assert launch_workers(str(launchpad_file), fworker_file(tmp_path, launchpad_file, ["cheap"]), 1,
                          tmp_path / "cheap", sleep=1) == [0]
