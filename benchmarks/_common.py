"""Helpers shared by the benchmark scripts.

Importing this module first makes BLAS/OpenMP single-threaded (unless set) before numpy/torch load, and puts
the repository on ``sys.path``: parallelism in fw-screen comes from worker processes, not threads.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def code_version() -> dict:
    """The commit and the uncommitted changes of fw_screen/ the figures were measured with."""

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "modified_product_files": (git("status", "--short", "--", "fw_screen") or "").splitlines()}


def loadavg() -> list[float]:
    """The 1/5/15-minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(**extra) -> dict:
    """The machine a benchmark runs on (``extra`` entries before the load average at start)."""
    import platform

    import psutil

    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1024 ** 3, 1),
            "python": platform.python_version(), "platform": platform.platform(), **extra,
            "loadavg_at_start": loadavg()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_results(path: Path, results: dict) -> None:
    """Write a benchmark's results as JSON and say where."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nresults: {path} (total {results['total_s']} s)")
