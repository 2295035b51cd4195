"""The training-sample log, format 2: the stream's record of what it applied, for training.
Specified in SAMPLE_LOG.md; this module is the only code that writes, reads or lays out its files.

The stream writes one line per event it applied, and before a user's first event of each UTC day
(and after a restart) one snapshot of that user's state. `fold_sample_log` turns the lines back
into `SampleRow`s with the feature functions the stream ran, starting each user at a snapshot: a
day's lines need no earlier day, so retention deletes whole days and training reads any window of
them. Every line carries the user's version (events applied), so a missing line shows as a gap.
"""

import shutil
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import orjson

from schemas.events import Event, EventType
from schemas.logic.features import FeatureSpec, SequenceEntry, UserEvent, UserFeatures, UserSequence
from schemas.logic.samples import SampleRow, training_sample
from schemas.logic.streaming import UserState, apply_user_event

FORMAT_VERSION = 2
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


def snapshot_line(
    user_id: str, state: UserState, partition: int, offset: int, day: date, sequence_length: int
) -> bytes:
    """The state of `user_id` just before the event at (`partition`, `offset`), the first of the
    user's events the stream applied on the UTC `day`."""
    entries = [(e.event_id, e.item_id, e.type, e.ts, e.value) for e in state.sequence.entries]
    return orjson.dumps((SNAPSHOT, partition, offset, state.version, user_id, day, sequence_length, entries,
                         state.features))  # fmt: skip


@dataclass
class FoldReport:
    """What a fold met besides rows; all but `rows` and `before_window` are zero for a whole log."""

    rows: int = 0
    before_window: int = 0
    """Event lines that belong to a day before the window (or whose day's snapshot is not among the lines)."""
    gaps: int = 0
    """Event lines whose version does not follow the user's: a line before them is missing."""
    mismatched_snapshots: int = 0
    """Snapshots that differ from the state folded up to them (e.g. one after a restart)."""


def fold_sample_log(lines: Iterable[bytes], since: date = date.min) -> tuple[list[SampleRow], FoldReport]:
    """The rows of every labelled event in `lines` that the stream applied on a UTC day from
    `since` on, each user folded in its Kafka order."""
    by_user: dict[str, list[list]] = defaultdict(list)
    for line in lines:
        record = orjson.loads(line)
        by_user[record[4]].append(record)
    rows: list[SampleRow] = []
    report = FoldReport()
    for records in by_user.values():
        # A user's events come from one partition in offset order; its snapshot precedes its event.
        records.sort(key=lambda record: (record[1], record[2], record[0] == EVENT))
        _fold_user(records, since.isoformat(), rows, report)
    report.rows = len(rows)
    return rows, report


def _fold_user(records: list[list], since: str, rows: list[SampleRow], report: FoldReport) -> None:
    state: UserState | None = None
    spec, in_window = FeatureSpec(), False
    for record in records:
        if record[0] == SNAPSHOT:
            snapshot, spec, in_window = _snapshot(record), _spec(record[6]), record[5] >= since
            report.mismatched_snapshots += state is not None and state != snapshot
            state = snapshot
            continue
        if state is None:
            report.before_window += 1
            continue
        _, _, _, version, user_id, event_id, item_id, kind, value, ts, request_id, position = record
        event = UserEvent(event_id, user_id, item_id, _EVENT_TYPES[kind], value, ts, request_id, position)
        if not in_window:
            report.before_window += 1
        elif (row := training_sample(state, event)) is not None:
            rows.append(row)
        state = apply_user_event(state, event, spec)
        report.gaps += state.version != version


def _snapshot(record: list) -> UserState:
    _, _, _, version, _, _, _, entries, features = record
    sequence = UserSequence(
        tuple(SequenceEntry(e, item, _EVENT_TYPES[kind], ts, value) for e, item, kind, ts, value in entries)
    )
    return UserState(sequence, UserFeatures(**features), version)


_SPECS: dict[int, FeatureSpec] = {}


def _spec(sequence_length: int) -> FeatureSpec:
    """The feature spec the stream ran with: of its fields only the sequence length shapes a user's state."""
    if sequence_length not in _SPECS:
        _SPECS[sequence_length] = FeatureSpec(sequence_length=sequence_length)
    return _SPECS[sequence_length]


def today() -> date:
    return datetime.now(UTC).date()


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


def read_window(directory: Path, days: int) -> tuple[list[SampleRow], FoldReport, int]:
    """The rows of the newest `days` UTC days of the log (today included), and how many files held them.
    The day before is read too: a file is named by the sink's clock, a snapshot's day by the operator's."""
    since = today() - timedelta(days=days - 1)
    files = committed_files(directory, since - timedelta(days=1))
    lines = (line for path in files for line in path.read_bytes().splitlines() if line)
    rows, report = fold_sample_log(lines, since)
    return rows, report, len(files)


def prune(directory: Path, keep_days: int) -> list[date]:
    """Delete the day directories older than the newest `keep_days` UTC days; returns their days."""
    oldest_kept = today() - timedelta(days=keep_days - 1)
    doomed = [(day, path) for day, path in day_directories(directory) if day < oldest_kept]
    for _, path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return [day for day, _ in doomed]
