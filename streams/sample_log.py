"""The feature job's side of the training-sample log (format and lines in `schemas.sample_log`).

`SampleLogKeeper` runs in the job's driver. Flink's file sink commits the files a checkpoint covers
when the checkpoint completes, and a restored job commits the ones its checkpoint covered; what a
task was writing after its last checkpoint when it died (the whole job killed, or one TaskManager
and the job restarted in place) stays behind as hidden in-progress files, which nothing will
commit. The keeper deletes those once three checkpoints have completed after it first saw them,
and deletes days past the retention.
"""

import logging
import threading
import time
from pathlib import Path

from schemas.sample_log import in_progress_files, prune
from streams.flink_env import completed_checkpoints

log = logging.getLogger("kingfisher.features")
DAY_S = 86_400
CHECKPOINTS_BEFORE_CLEANUP = 3
RETENTION_EVERY_S = 3600.0
POLL_S = 1.0


FileSignature = tuple[int, int]  # size and modification time (ns): a file being written changes it


class OrphanWatch:
    """Tells the in-progress files no running writer will commit: those left unchanged while
    `CHECKPOINTS_BEFORE_CLEANUP` checkpoints completed after they were first seen.

    The sink rolls each file it writes at every checkpoint's barrier and commits (renames) it when
    that checkpoint's completion is notified. Files are listed before checkpoints, so the second
    checkpoint to complete after a sighting was triggered after it: a live writer rolled the file at
    that barrier and committed it on that completion's notice, which comes before the third
    completion. What is still there unchanged then was written by a task that died after its last
    checkpoint: the restored task starts new files and nothing commits the dead one's. Only sightings
    are compared, never clocks, so this holds for checkpoints on any file system and for a restart
    inside a running job (with Flink's default of one checkpoint at a time)."""

    def __init__(self) -> None:
        self.checkpoints: set[str] | None = None
        self.completed = 0
        self.sightings: dict[Path, tuple[FileSignature, int]] = {}

    def observe(self, in_progress: dict[Path, FileSignature], checkpoints: set[str]) -> list[Path]:
        """The orphans among `in_progress`, given the completed `checkpoints` listed after it (Flink
        deletes older checkpoints, so each new name is one completion)."""
        if self.checkpoints is not None:
            self.completed += len(checkpoints - self.checkpoints)
        self.checkpoints = checkpoints
        sightings = {}
        for path, signature in in_progress.items():
            seen = self.sightings.get(path)
            sightings[path] = seen if seen is not None and seen[0] == signature else (signature, self.completed)
        self.sightings = sightings
        return sorted(
            p for p, (_, seen_at) in sightings.items() if self.completed - seen_at >= CHECKPOINTS_BEFORE_CLEANUP
        )


class SampleLogKeeper(threading.Thread):
    """Deletes the in-progress files no running writer will commit (`OrphanWatch`), and hourly the
    days past the retention."""

    def __init__(self, directory: Path, checkpoints: str, retention_days: int, poll_s: float = POLL_S):
        """`checkpoints`: the URI the job checkpoints under (local or remote: `completed_checkpoints`)."""
        super().__init__(name="sample-log-keeper", daemon=True)
        self.directory, self.checkpoints, self.retention_days = directory, checkpoints, retention_days
        self.poll_s = poll_s
        self.stopped = threading.Event()

    def run(self) -> None:
        watch, next_prune = OrphanWatch(), 0.0
        while not self.stopped.is_set():
            in_progress = file_signatures(in_progress_files(self.directory))
            try:
                orphans = watch.observe(in_progress, set(completed_checkpoints(self.checkpoints)))
            except OSError as error:  # e.g. the object store not answering: look again next time
                log.warning("sample log: cannot list the checkpoints under %s: %s", self.checkpoints, error)
                orphans = []
            self._unlink(orphans, "no running task will commit")
            if time.monotonic() >= next_prune:
                if dropped := prune(self.directory, self.retention_days):
                    log.info("sample log: deleted the days %s (older than %d days)", dropped, self.retention_days)
                next_prune = time.monotonic() + RETENTION_EVERY_S
            self.stopped.wait(self.poll_s)

    def delete_leftovers(self) -> None:
        """After the job has finished, which commits all it wrote: whatever is in progress is left over."""
        self._unlink(in_progress_files(self.directory), "the finished job left")

    def _unlink(self, paths: list[Path], why: str) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        if paths:
            log.info("sample log: deleted %d in-progress files %s", len(paths), why)

    def stop(self) -> None:
        self.stopped.set()


def file_signatures(paths: list[Path]) -> dict[Path, FileSignature]:
    """Each file's size and modification time; a file renamed (committed) meanwhile is left out."""
    signatures = {}
    for path in paths:
        try:
            status = path.stat()
        except FileNotFoundError:
            continue
        signatures[path] = (status.st_size, status.st_mtime_ns)
    return signatures
