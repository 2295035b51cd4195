"""The training-sample log, format 3: the stream's record of what it applied, for training.
Specified in SAMPLE_LOG.md; this module is the only code that writes, reads or lays out its files.

The stream writes one line per event it applied, and before a user's first event of each UTC day
(and after a restart) one snapshot of that user's state and the feature spec it runs with.
`schemas.runtime.samples.fold_sample_log` turns the lines back into `SampleRow`s with the feature
functions the stream ran, starting each user at a snapshot: a
day's lines need no earlier day, so retention deletes whole days and training reads any window of
them. Every line carries the user's version (events applied), so a missing line shows as a gap.
"""

import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import orjson

from schemas.events import Event, EventType
from schemas.features import FeatureSpec, SequenceEntry, UserEvent, UserFeatures, UserSequence, UserState

FORMAT_VERSION = 3
EVENT, SNAPSHOT = "e", "s"
PART_PREFIX, PART_SUFFIX = "events", ".jsonl"
DAY_PREFIX = "dt="
DAY_BUCKET_FORMAT = "'dt='yyyy-MM-dd"
"""The day directories, as a pattern of Java's DateTimeFormatter (the stream's file sink names them, in UTC)."""
_EVENT_TYPES = MappingProxyType({event_type.value: event_type for event_type in EventType})


def log_directory(samples_dir: Path, namespace: str) -> Path:
    """Where the feature job of `namespace` writes its log: each namespace's log is whole on its own."""
    return samples_dir / namespace / f"v{FORMAT_VERSION}"


def event_line(event: Event, partition: int, offset: int, version: int) -> bytes:
    """The line of an applied event; `version` is the user's version after it."""
    return orjson.dumps((EVENT, partition, offset, version, event.user_id, event.event_id, event.item_id,
                         event.type, event.value, event.ts, event.request_id, event.position))  # fmt: skip


def snapshot_line(user_id: str, state: UserState, partition: int, offset: int, day: date, spec: FeatureSpec) -> bytes:
    """The state of `user_id` just before the event at (`partition`, `offset`), the first of the
    user's events the stream applied on the UTC `day`, and the feature spec the stream applies."""
    entries = [(e.event_id, e.item_id, e.type, e.ts, e.value) for e in state.sequence.entries]
    spec_fields = spec.model_dump(mode="json")
    return orjson.dumps((SNAPSHOT, partition, offset, state.version, user_id, day, spec_fields, entries,
                         state.features))  # fmt: skip


class SampleLogLines:
    """A batch's lines, as the stream's user stage (and the backfill) collects them: one per applied
    event, and before a user's first event of each UTC day one snapshot of the user's state. Which
    users were snapshotted today is kept in memory only: after a restart every user is snapshotted
    again on its next event, which is redundant but exact, so it needs no Flink state."""

    def __init__(self, spec: FeatureSpec, clock: Callable[[], float] = time.time):
        self.spec, self.clock = spec, clock
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
            self.lines.append(snapshot_line(user_id, before, partition, offset, self.day, self.spec))
        self.lines.append(event_line(event, partition, offset, version))

    def take(self) -> str | None:
        """The batch's lines as one text (the file sink writes it with a final newline), or None."""
        if not self.lines:
            return None
        text, self.lines = b"\n".join(self.lines).decode(), []
        return text


class Snapshot(NamedTuple):
    state: UserState
    spec: FeatureSpec
    day: str
    """The UTC day, ISO format."""


def lines_by_user(lines: Iterable[bytes]) -> Iterable[list[list]]:
    """Each user's records (decoded lines), in the order the stream applied them: a user's events
    come from one partition in offset order, and a snapshot precedes the event it was taken before."""
    by_user: dict[str, list[list]] = defaultdict(list)
    for line in lines:
        record = orjson.loads(line)
        by_user[record[4]].append(record)
    for records in by_user.values():
        records.sort(key=lambda record: (record[1], record[2], record[0] == EVENT))
        yield records


def snapshot_of(record: list) -> Snapshot | None:
    """The snapshot a record holds; None for an event's record."""
    if record[0] != SNAPSHOT:
        return None
    _, _, _, version, _, day, spec, entries, features = record
    sequence = UserSequence(
        tuple(SequenceEntry(e, item, _EVENT_TYPES[kind], ts, value) for e, item, kind, ts, value in entries)
    )
    return Snapshot(UserState(sequence, UserFeatures(**features), version), _spec_of(spec), day)


_SPECS: dict[bytes, FeatureSpec] = {}
"""Each distinct spec parsed once: a log holds the same one in every snapshot."""


def _spec_of(stored: dict) -> FeatureSpec:
    key = orjson.dumps(stored, option=orjson.OPT_SORT_KEYS)
    if key not in _SPECS:
        _SPECS[key] = FeatureSpec.model_validate(stored)
    return _SPECS[key]


def event_of(record: list) -> tuple[UserEvent, int]:
    """The event an event's record holds and the user's version after it."""
    _, _, _, version, user_id, event_id, item_id, kind, value, ts, request_id, position = record
    return UserEvent(event_id, user_id, item_id, _EVENT_TYPES[kind], value, ts, request_id, position), version


def today() -> date:
    return datetime.now(UTC).date()


def part_file(directory: Path, day: date, writer: str) -> Path:
    """The committed file of one writer's lines of `day` (the job's file sink names its own alike)."""
    return directory / f"{DAY_PREFIX}{day.isoformat()}" / f"{PART_PREFIX}-{writer}{PART_SUFFIX}"


def day_directories(directory: Path) -> list[tuple[date, Path]]:
    """The log's day directories, oldest first."""
    days = []
    for path in directory.glob(f"{DAY_PREFIX}*"):
        try:
            days.append((date.fromisoformat(path.name.removeprefix(DAY_PREFIX)), path))
        except ValueError:
            continue
    return sorted(days)


def committed_files(directory: Path, since: date) -> list[Path]:
    """Committed files of the days from `since` on. In-progress files are hidden (a leading dot)
    until the checkpoint that covers them completes."""
    return [
        path
        for day, folder in day_directories(directory)
        if day >= since
        for path in sorted(folder.glob(f"{PART_PREFIX}*{PART_SUFFIX}"))
    ]


def in_progress_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"{DAY_PREFIX}*/.{PART_PREFIX}*"))


def prune(directory: Path, keep_days: int) -> list[date]:
    """Delete the day directories older than the newest `keep_days` UTC days; returns their days."""
    oldest_kept = today() - timedelta(days=keep_days - 1)
    doomed = [(day, path) for day, path in day_directories(directory) if day < oldest_kept]
    for _, path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return [day for day, _ in doomed]
