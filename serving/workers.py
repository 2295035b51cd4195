"""Several service processes on one port: `python -m serving --workers N` (KF_SERVE_WORKERS).

The supervisor starts N workers, each a whole service (`python -m serving --reuse-port`) that
binds the port with SO_REUSEPORT, so the kernel spreads new connections over them, and loads and
hot-swaps the models on its own. One process's Python (the event loop, parsing, the pipeline around
the model calls) runs on one core at a time, as the GIL allows; N processes can use N. They share a
Prometheus multiprocess directory (`serving.metrics`). A worker that dies is started again; on
SIGTERM or SIGINT the supervisor stops them all and exits.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from schemas.config import Settings
from serving.metrics import MULTIPROCESS_DIR

log = logging.getLogger("kingfisher.serving.workers")
CHECK_S = 0.5
STOP_TIMEOUT_S = 30


def metrics_directory(settings: Settings, port: int) -> Path:
    """The workers' shared Prometheus files: one directory per port, as runs may sit side by side."""
    return settings.stack.scratch / "prometheus" / f"serve-{port}"


class Supervisor:
    def __init__(self, settings: Settings, port: int, workers: int):
        self.metrics_dir = metrics_directory(settings, port)
        self.command = [sys.executable, "-m", "serving", "--port", str(port), "--workers", "1", "--reuse-port"]
        self.count = workers
        self.workers: list[subprocess.Popen] = []
        self.stopping = threading.Event()

    def run(self) -> int:
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # a dead run's values must not count
        self.metrics_dir.mkdir(parents=True)
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, lambda *_: self.stopping.set())
        self.workers = [self._start() for _ in range(self.count)]
        while not self.stopping.wait(CHECK_S):
            self.workers = [self._replaced(worker) if worker.poll() is not None else worker for worker in self.workers]
        self._stop_all()
        return 0

    def _start(self) -> subprocess.Popen:
        # KF_SERVE_WORKERS: each worker's /readyz waits for as many workers with a model as there are.
        environment = {MULTIPROCESS_DIR: str(self.metrics_dir), "KF_SERVE_WORKERS": str(self.count)}
        worker = subprocess.Popen(self.command, env=os.environ | environment)
        log.info("worker %d started", worker.pid)
        return worker

    def _replaced(self, worker: subprocess.Popen) -> subprocess.Popen:
        log.error("worker %d exited with code %s; starting another", worker.pid, worker.returncode)
        mark_process_dead(worker.pid, str(self.metrics_dir))
        return self._start()

    def _stop_all(self) -> None:
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            mark_process_dead(worker.pid, str(self.metrics_dir))
