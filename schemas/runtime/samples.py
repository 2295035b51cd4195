"""Training samples: one row per labelled event with the user's state just before it (point in time).

The stream does not write rows. It logs the events it applied and, per user and day, the state the
user started from (the sample log, `schemas.sample_log`); training folds that log back into rows
with the functions the stream ran (`apply_user_event`, `training_sample`), so it gets, for every
labelled event, exactly the sequence and features the stream had just before it. `sample_rows`
does the same for a dataset's events: training's bootstrap path.
"""

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import NamedTuple

from schemas import sample_log
from schemas.events import Event, EventType
from schemas.features import FeatureSpec, SequenceEntry, UserEvent, UserFeatures, UserState
from schemas.runtime.features import unique_events
from schemas.runtime.streaming import apply_user_event

LABELLED_TYPES = frozenset({EventType.IMPRESSION, EventType.CLICK, EventType.RATING, EventType.PURCHASE})


class SampleRow(NamedTuple):
    """A labelled event and the user's state just before it. `sequence` holds only interactions
    earlier in event time than the event; `features` are the user's features before it. Both are
    the stream's own immutable state objects, shared between rows, never copied."""

    event: UserEvent
    sequence: tuple[SequenceEntry, ...]
    features: UserFeatures

    @property
    def order(self) -> tuple[int, str]:
        """Event time, then event_id: the one order of rows whichever way they were built."""
        return self.event.ts, self.event.event_id


def training_sample(before: UserState, event: Event | UserEvent) -> SampleRow | None:
    """The row for `event`, or None if its type is not labelled."""
    if event.type not in LABELLED_TYPES:
        return None
    entries = before.sequence.entries  # ordered by (ts, event_id): the cut is a binary search
    history = entries[: bisect.bisect_left(entries, (event.ts, event.event_id), key=lambda entry: entry.order)]
    return SampleRow(UserEvent.of(event), history, before.features)


def sample_rows(events: Iterable[Event], spec: FeatureSpec) -> Iterator[SampleRow]:
    """The rows the stream's log holds for `events` in this order, deduplicated as the stream does."""
    users: dict[str, UserState] = {}
    for event in unique_events(events):
        before = users.get(event.user_id, UserState())
        if (row := training_sample(before, event)) is not None:
            yield row
        users[event.user_id] = apply_user_event(before, event, spec)


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
    feature_specs: list[FeatureSpec] = field(default_factory=list)
    """The feature specs the stream recorded in the snapshots: one, unless it was restarted with another."""


def fold_sample_log(lines: Iterable[bytes], since: date = date.min) -> tuple[list[SampleRow], FoldReport]:
    """The rows of every labelled event in `lines` that the stream applied on a UTC day from
    `since` on, each user folded in its Kafka order with the feature spec of its snapshot."""
    rows: list[SampleRow] = []
    report = FoldReport()
    for records in sample_log.lines_by_user(lines):
        _fold_user(records, since.isoformat(), rows, report)
    report.rows = len(rows)
    return rows, report


def _fold_user(records: list[list], since: str, rows: list[SampleRow], report: FoldReport) -> None:
    state: UserState | None = None
    spec, in_window = FeatureSpec(), False
    for record in records:
        if (snapshot := sample_log.snapshot_of(record)) is not None:
            spec, in_window = snapshot.spec, snapshot.day >= since
            report.mismatched_snapshots += state is not None and state != snapshot.state
            if spec not in report.feature_specs:
                report.feature_specs.append(spec)
            state = snapshot.state
            continue
        if state is None:
            report.before_window += 1
            continue
        event, version = sample_log.event_of(record)
        if not in_window:
            report.before_window += 1
        elif (row := training_sample(state, event)) is not None:
            rows.append(row)
        state = apply_user_event(state, event, spec)
        report.gaps += state.version != version


def read_window(directory: Path, days: int) -> tuple[list[SampleRow], FoldReport, int]:
    """The rows of the newest `days` UTC days of the log (today included), and how many files held them.
    The day before is read too: a file is named by the sink's clock, a snapshot's day by the operator's."""
    since = sample_log.today() - timedelta(days=days - 1)
    files = sample_log.committed_files(directory, since - timedelta(days=1))
    lines = (line for path in files for line in path.read_bytes().splitlines() if line)
    rows, report = fold_sample_log(lines, since)
    return rows, report, len(files)
