"""The example files in launchpad/ load with FireWorks' own readers (what lpad/rlaunch/qlaunch do)."""

from pathlib import Path

import pytest
from fireworks import FWorker, LaunchPad
from fireworks.utilities.fw_serializers import load_object_from_file

CONFIGS = Path(__file__).resolve().parent.parent / "launchpad"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("my_launchpad_*.yaml")))
def test_launchpad_files_load(name):
    lp = LaunchPad.from_file(str(CONFIGS / name))
    assert lp.name.startswith("fw_screen")


@pytest.mark.parametrize("category", ["cheap", "ml", "dft"])
def test_fworker_files_load(category):
    worker = FWorker.from_file(str(CONFIGS / f"my_fworker_{category}.yaml"))
    assert worker.category == [category]
    assert "db_file" in worker.env


@pytest.mark.parametrize("name", ["my_qadapter_slurm.yaml", "my_qadapter_pbs.yaml"])
def test_queue_adapters_render_a_script(name):
    adapter = load_object_from_file(str(CONFIGS / name))
    script = adapter.get_script_str("/tmp")
    assert "rlaunch" in script and "OPENBLAS_NUM_THREADS=1" in script
