"""The example files in launchpad/ load with FireWorks' own readers (what lpad/rlaunch/qlaunch do)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fireworks import FWorker, LaunchPad
from fireworks.user_objects.queue_adapters.common_adapter import CommonAdapter
from fireworks.utilities.fw_serializers import load_object_from_file

from fw_screen.dft import qe

CONFIGS = Path(__file__).resolve().parent.parent / "launchpad"
ADAPTERS = sorted(p.name for p in CONFIGS.glob("my_qadapter_*.yaml"))


def _seconds(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return 3600 * h + 60 * m + s


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("my_launchpad_*.yaml")))
def test_launchpad_files_load(name):
    lp = LaunchPad.from_file(str(CONFIGS / name))
    assert lp.name.startswith("fw_screen")


@pytest.mark.parametrize("category", ["cheap", "ml", "dft"])
def test_fworker_files_load(category):
    worker = FWorker.from_file(str(CONFIGS / f"my_fworker_{category}.yaml"))
    assert worker.category == [category]
    assert worker.query["spec._category"] == {"$in": [category]}
    assert worker.env["db_file"].endswith(".yaml")
    assert "/path/to" not in str(worker.env)


def test_dft_fworker_env_resolves_to_the_file_values(monkeypatch):
    """The DFT FWorker env is what the QE stage uses when the spec leaves pw_cmd/mpi_cmd/pseudo_dir null."""
    for var in qe.ENV_VARS.values():
        monkeypatch.setenv(var, "from-the-environment")  # the FWorker env must win over these
    worker = FWorker.from_file(str(CONFIGS / "my_fworker_dft.yaml"))
    settings = qe.resolve_settings({}, worker.env)
    assert settings["pw_cmd"] == worker.env["pw_cmd"] == "pw.x"
    assert settings["mpi_cmd"] == worker.env["mpi_cmd"] == "srun"
    assert settings["pseudo_dir"] == worker.env["pseudo_dir"]
    assert settings["pseudo_dir"].endswith("SSSP_1.3.0_PBE_efficiency")
    # the default spec's dft.qe section (all three null) resolves the same way
    import yaml

    spec_qe = yaml.safe_load((CONFIGS.parent / "specs" / "default.yaml").read_text())["dft"]["qe"]
    resolved = qe.resolve_settings(spec_qe, worker.env)
    assert {k: resolved[k] for k in ("pw_cmd", "mpi_cmd", "pseudo_dir")} == \
        {k: settings[k] for k in ("pw_cmd", "mpi_cmd", "pseudo_dir")}
    # the VASP path's keys, read by atomate's env_chk (>>vasp_cmd<<, >>atomate_db_file<<)
    assert worker.env["vasp_cmd"] and worker.env["atomate_db_file"].endswith(".json")


@pytest.mark.parametrize("name", ADAPTERS)
def test_queue_adapters_render_a_script(name, tmp_path):
    adapter = load_object_from_file(str(CONFIGS / name))
    assert isinstance(adapter, CommonAdapter)
    assert CommonAdapter.from_file(str(CONFIGS / name)).q_type == adapter.q_type
    script = adapter.get_script_str(str(tmp_path))
    assert "rlaunch" in script and "OPENBLAS_NUM_THREADS=1" in script
    assert "$${" not in script and "/path/to" not in script
    category = "ml" if "_ml_" in name else "dft" if "_dft_" in name else "cheap"
    worker = f"{category}_gpu" if "_gpu_" in name else category
    assert f"my_fworker_{worker}.yaml" in script
    if shutil.which("bash"):  # the rendered job script is valid shell
        path = tmp_path / "job.sh"
        path.write_text(script)
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_gpu_fworker_pulls_ml_fireworks_and_insists_on_cuda():
    from fw_screen.spec import ML_DEVICES

    worker = FWorker.from_file(str(CONFIGS / "my_fworker_ml_gpu.yaml"))
    assert worker.category == ["ml"] and worker.query["spec._category"] == {"$in": ["ml"]}
    assert worker.env["db_file"].endswith(".yaml") and "/path/to" not in str(worker.env)
    assert worker.env["ml_device"] == "cuda" and worker.env["ml_device"] in ML_DEVICES


@pytest.mark.parametrize("name", [n for n in ADAPTERS if "_gpu_" in n])
def test_gpu_adapters_request_a_gpu(name, tmp_path):
    """The SLURM GPU adapter renders a GPU request through FireWorks' own SLURM template keys."""
    adapter = load_object_from_file(str(CONFIGS / name))
    assert "_ml_" in name and adapter.q_type == "SLURM"
    script = adapter.get_script_str(str(tmp_path))
    assert re.search(r"^#SBATCH --(gpus-per-node=[1-9]|gres=gpu:[1-9]|gpus=[1-9])", script, re.M), script
    assert "my_fworker_ml_gpu.yaml" in script


@pytest.mark.parametrize("name", [n for n in ADAPTERS if "_ml_" in n])
def test_ml_adapters_set_single_thread_workers(name, tmp_path):
    script = load_object_from_file(str(CONFIGS / name)).get_script_str(str(tmp_path))
    assert "FW_SCREEN_TORCH_THREADS=1" in script and "wait" in script


@pytest.mark.parametrize("name", [n for n in ADAPTERS if "_dft_" in n])
def test_dft_adapters_leave_room_for_the_walltime_checkpoint(name):
    """--timeout (last Firework start) + dft.qe.walltime_s (its clean stop) + margin fits the queue's wall time."""
    text = (CONFIGS / name).read_text()
    adapter = load_object_from_file(str(CONFIGS / name))
    timeout = int(re.search(r"--timeout (\d+)", adapter["rocket_launch"]).group(1))
    walltime_s = int(re.search(r"walltime_s = (\d+)", text).group(1))
    assert timeout + walltime_s + 1800 <= _seconds(adapter["walltime"])
    cheap = load_object_from_file(str(CONFIGS / name.replace("_dft", "")))
    assert _seconds(adapter["walltime"]) > _seconds(cheap["walltime"])
