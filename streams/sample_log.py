"""The feature job's side of the training-sample log (format in `schemas.sample_log`).

`SampleLogLines` collects a batch's lines in the user stage: one per applied event, and before a
user's first event of each UTC day one snapshot of the user's state. Which users were snapshotted
today is kept in memory only: after a restart every user is snapshotted again on its next event,
which is redundant but exact, so it needs no Flink state.

`SampleLogKeeper` runs in the job's driver. Flink's file sink commits the files a checkpoint covers
when the checkpoint completes, and a restored job commits the ones its checkpoint covered; what a
killed job was writing after its last checkpoint stays behind as hidden in-progress files, which
nothing will commit. The keeper deletes those once the restarted job has completed two
checkpoints, and deletes days past the retention.
"""

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

from schemas.events import Event
from schemas.logic.streaming import UserState
from schemas.sample_log import event_line, in_progress_files, prune, snapshot_line

log = logging.getLogger("kingfisher.features")
DAY_S = 86_400
CHECKPOINTS_BEFORE_CLEANUP = 2
RETENTION_EVERY_S = 3600.0
POLL_S = 1.0


class SampleLogLines:
    def __init__(self, sequence_length: int, clock: Callable[[], float] = time.time):
        self.sequence_length, self.clock = sequence_length, clock
        self.day: date | None = None
        self.snapshotted: set[str] = set()
        self.lines: list[bytes] = []

    def start_batch(self) -> None:
        day = datetime.fromtimestamp(self.clock(), UTC).date()
        if day != self.day:
            self.day, self.snapshotted = day, set()

    def add(self, before: UserState, event: Event, partition: int, offset: int, version: int) -> None:
        """Log `event`, applied at (`partition`, `offset`) to `before`, giving the user `version`."""
        user_id = event.user_id
        # A user without state (new, or expired in Flink) always starts from a snapshot of it.
        if before.version == 0 or user_id not in self.snapshotted:
            self.snapshotted.add(user_id)
            self.lines.append(snapshot_line(user_id, before, partition, offset, self.day, self.sequence_length))
        self.lines.append(event_line(event, partition, offset, version))

    def take(self) -> str | None:
        """The batch's lines as one text (the file sink writes it with a final newline), or None."""
        if not self.lines:
            return None
        text, self.lines = b"\n".join(self.lines).decode(), []
        return text


class SampleLogKeeper(threading.Thread):
    """Deletes the in-progress files a killed run left behind, then keeps the retention, hourly."""

    def __init__(self, directory: Path, checkpoints: Path | None, retention_days: int):
        """`checkpoints`: the job's local checkpoint directory; None when they are on a remote file
        system, whose completed checkpoints the keeper cannot watch: orphans are then left in place."""
        super().__init__(name="sample-log-keeper", daemon=True)
        self.directory, self.checkpoints, self.retention_days = directory, checkpoints, retention_days
        self.started = time.time()
        self.stopped = threading.Event()

    def run(self) -> None:
        if self.checkpoints is None:
            log.warning("sample log: checkpoints are remote, so in-progress files of killed runs are not deleted")
        else:
            self._wait_for_new_checkpoints()
            if not self.stopped.is_set():
                self.delete_orphans()
        while not self.stopped.is_set():
            if dropped := prune(self.directory, self.retention_days):
                log.info("sample log: deleted the days %s (older than %d days)", dropped, self.retention_days)
            self.stopped.wait(RETENTION_EVERY_S)

    def _wait_for_new_checkpoints(self) -> None:
        # Restored files are committed when the restored job's first checkpoint completes at the latest.
        # Flink keeps only the newest checkpoint, so the ones seen are remembered.
        seen: set[Path] = set()
        while not self.stopped.is_set():
            seen |= {path for path in self.checkpoints.glob("*/chk-*/_metadata") if _modified(path) > self.started}
            if len(seen) >= CHECKPOINTS_BEFORE_CLEANUP:
                return
            self.stopped.wait(POLL_S)

    def delete_orphans(self) -> None:
        """Delete in-progress files older than this run: written after the last checkpoint of a run that died."""
        orphans = [path for path in in_progress_files(self.directory) if _modified(path) < self.started]
        for path in orphans:
            path.unlink(missing_ok=True)
        if orphans:
            log.info("sample log: deleted %d in-progress files a stopped run left behind", len(orphans))

    def stop(self) -> None:
        self.stopped.set()


def _modified(path: Path) -> float:
    """The file's modification time; infinity once Flink has deleted or renamed it."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
