"""Training samples: one row per labelled event with the user's state just before it.

The stream writes these rows (JSON lines, partitioned by event date and hour); training reads
them. Impressions are logged too: training labels an impression negative unless a click with
the same `request_id` and `item_id` follows it.
"""

import bisect
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from schemas.events import Event, EventType
from schemas.features import FeatureSpec, unique_events
from schemas.streaming import UserState, apply_user_event

SAMPLE_VERSION = 1
LABELLED_TYPES = frozenset({EventType.IMPRESSION, EventType.CLICK, EventType.RATING, EventType.PURCHASE})


def training_sample(before: UserState, event: Event) -> dict[str, Any] | None:
    """The row for `event`, or None if its type is not labelled. Point-in-time: the sequence holds
    only interactions earlier in event time than `event`, the features are those before it."""
    if event.type not in LABELLED_TYPES:
        return None
    context = event.context or {}
    entries = before.sequence.entries  # ordered by (ts, event_id): the cut is a binary search
    history = entries[: bisect.bisect_left(entries, (event.ts, event.event_id), key=lambda entry: entry.order)]
    return {
        "sample_version": SAMPLE_VERSION,
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "type": event.type._value_,
        "value": event.value,
        "ts": event.ts,
        "request_id": context.get("request_id"),
        "position": context.get("position"),
        "sequence": [[entry.item_id, entry.type._value_, entry.ts, entry.value] for entry in history],
        "user_features": before.features,
    }


def sample_log(events: Iterable[Event], spec: FeatureSpec) -> Iterator[dict[str, Any]]:
    """The rows the stream logs for `events` in this order, as a reader of the log gets them back
    (through JSON): training's bootstrap path from a dataset, identical to the stream's log."""
    users: dict[str, UserState] = {}
    for event in unique_events(events):
        before = users.get(event.user_id, UserState())
        sample = training_sample(before, event)
        if sample is not None:
            yield orjson.loads(orjson.dumps(sample))
        users[event.user_id] = apply_user_event(before, event, spec)


def hour_partition(ts: int) -> tuple[str, str]:
    """(date, hour) of an event time in UTC, e.g. ('2026-11-22', '09'): the sample log's partitions."""
    moment = time.gmtime(ts // 1000)
    return f"{moment.tm_year:04d}-{moment.tm_mon:02d}-{moment.tm_mday:02d}", f"{moment.tm_hour:02d}"
