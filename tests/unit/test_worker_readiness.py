"""A service of several processes is ready when every worker has a model, whichever answers /readyz."""

import subprocess
import sys

from serving.metrics import MULTIPROCESS_DIR, Metrics
from tests.conftest import REPO_ROOT

WORKER = "import sys; from serving.metrics import Metrics; Metrics().model_version.set(int(sys.argv[1]))"


def worker_with_version(directory, version: int) -> None:
    """A real process writing its live model version into the shared directory, as a worker does."""
    environment = {MULTIPROCESS_DIR: str(directory), "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", WORKER, str(version)], env=environment, check=True, cwd=REPO_ROOT)


def test_only_workers_with_a_live_model_count(tmp_path, monkeypatch):
    monkeypatch.setenv(MULTIPROCESS_DIR, str(tmp_path))
    worker_with_version(tmp_path, 3)
    worker_with_version(tmp_path, 0)  # still loading

    assert Metrics.workers_with_a_model() == 1

    worker_with_version(tmp_path, 4)
    assert Metrics.workers_with_a_model() == 2
