"""Training samples: one row per labelled event with the user's state just before it (point in time).

The stream does not write rows. It logs the events it applied and, per user and day, the state the
user started from (the sample log, `schemas.sample_log`); training folds that log back into rows
with the functions the stream ran (`apply_user_event`, `training_sample`), so it gets, for every
labelled event, exactly the sequence and features the stream had just before it. `sample_rows`
does the same for a dataset's events: training's bootstrap path.
"""

import bisect
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from schemas.events import Event, EventType
from schemas.logic.features import FeatureSpec, SequenceEntry, UserEvent, UserFeatures, unique_events
from schemas.logic.streaming import UserState, apply_user_event

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
