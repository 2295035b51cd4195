"""Feature definitions: the one implementation of every live and offline feature.

Each feature is a pure `update(state, event, spec) -> state` function. The Flink job calls it per
event, a replay calls it over a topic, training calls it over history, so all three agree.
Results do not depend on arrival order: sequences are kept in event-time order, aggregates are
sums and maxima, and decayed popularity is anchored so a late event adds what it would have
added on time. Deduplication by event_id across the whole history is the caller's job (keyed
state in the stream, `unique_events` offline); `update_sequence` also ignores an event_id it holds.

The state classes here and in `schemas.logic.streaming` are slotted dataclasses that nothing mutates:
every function builds new ones. They are not declared frozen because a frozen dataclass sets each
field through object.__setattr__, and the stream builds several per event: that was one of the
largest costs of its Python operators.
"""

import bisect
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import Event, EventType

FEATURE_SPEC_VERSION = 1
HOUR_MS = 3_600_000
WINDOW_BUCKET_MS = 5 * 60_000
WINDOWS_MS = MappingProxyType({"1h": HOUR_MS, "24h": 24 * HOUR_MS})

DEFAULT_INTERACTION_WEIGHTS = MappingProxyType(
    {
        EventType.IMPRESSION: 0.0,
        EventType.CLICK: 1.0,
        EventType.PLAY: 1.0,
        EventType.RATING: 1.0,
        EventType.LIKE: 2.0,
        EventType.ADD_TO_CART: 2.0,
        EventType.PURCHASE: 4.0,
    }
)


class FeatureSpec(BaseModel):
    """The parameters of the features; recorded in every model bundle so training and serving agree."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = FEATURE_SPEC_VERSION
    sequence_length: int = Field(50, ge=1, le=1000, description="Interactions kept per user (newest N).")
    popularity_half_life_ms: int = Field(24 * HOUR_MS, gt=0, description="Half-life of an item's popularity.")
    interaction_weights: dict[EventType, float] = Field(
        default_factory=lambda: dict(DEFAULT_INTERACTION_WEIGHTS),
        description="How much one event of each type adds to an item's popularity.",
    )
    trending_size: int = Field(100, ge=1, description="Items in the trending list.")
    seen_capacity: int = Field(
        2000, ge=1, description="Items kept per user in the seen set (those of the newest interactions)."
    )


class PicklesAsFields:
    """For the slotted dataclasses of the stream's state, which it checkpoints once per batch
    and change: pickled as the class and its field values. The dataclass's own pickling calls a
    Python __getstate__ and __setstate__ per object (11 µs each way for an item's state here)."""

    __slots__ = ()

    def __reduce__(self):
        return type(self), tuple([getattr(self, name) for name in self.__dataclass_fields__])


@dataclass(slots=True)
class SequenceEntry:
    event_id: str
    item_id: str
    type: EventType
    ts: int
    value: float | None = None

    @property
    def order(self) -> tuple[int, str]:
        """Event time, then event_id, so equal timestamps order the same whatever the arrival order."""
        return self.ts, self.event_id


@dataclass(slots=True)
class UserSequence:
    """A user's newest interactions (not impressions), oldest first."""

    entries: tuple[SequenceEntry, ...] = ()

    def __reduce__(self):
        # The stream checkpoints each changed user's state once per batch. Pickled as dataclasses (a
        # Python __getstate__ per entry) 50 entries took 90 µs each way here; as plain rows, 23 µs out.
        rows = tuple(
            [(entry.event_id, entry.item_id, entry.type._value_, entry.ts, entry.value) for entry in self.entries]
        )
        return _sequence_of_rows, (rows,)

    @property
    def item_ids(self) -> list[str]:
        return [entry.item_id for entry in self.entries]


_EVENT_TYPES = MappingProxyType({event_type.value: event_type for event_type in EventType})


def _sequence_of_rows(rows: tuple[tuple, ...]) -> UserSequence:
    return UserSequence(
        tuple([SequenceEntry(e, item, _EVENT_TYPES[kind], ts, value) for e, item, kind, ts, value in rows])
    )


@dataclass(slots=True)
class InteractionStats(PicklesAsFields):
    """What user and item features both count."""

    event_counts: dict[str, int] = field(default_factory=dict)
    rating_count: int = 0
    rating_sum: float = 0.0
    last_ts: int | None = None

    @property
    def rating_mean(self) -> float | None:
        return self.rating_sum / self.rating_count if self.rating_count else None


@dataclass(slots=True)
class UserFeatures(InteractionStats):
    first_ts: int | None = None


@dataclass(slots=True)
class ItemFeatures(InteractionStats):
    popularity: float = 0.0
    """Exponentially decayed, weighted interaction count as of `popularity_ts`."""
    popularity_ts: int | None = None
    recent: tuple[tuple[int, int], ...] = ()
    """Interactions per 5-minute bucket (bucket start, count), for the 24 hours up to `last_ts`."""

    def interactions_within(self, window_ms: int) -> int:
        """Interactions in the `window_ms` up to `last_ts` (in whole 5-minute buckets)."""
        if self.last_ts is None:
            return 0
        oldest = _bucket(self.last_ts) - window_ms + WINDOW_BUCKET_MS
        return sum(count for start, count in self.recent if start >= oldest)

    @property
    def ctr(self) -> float | None:
        """Clicks per impression; None until the item has been shown."""
        impressions = self.event_counts.get(EventType.IMPRESSION, 0)
        return self.event_counts.get(EventType.CLICK, 0) / impressions if impressions else None


class UserEvent(NamedTuple):
    """An event as the training-sample log holds it: every field the user features and training
    samples read (an `Event` has the same ones). Rebuilding `Event`s when training reads the log
    cost several times more than folding them."""

    event_id: str
    user_id: str
    item_id: str
    type: EventType
    value: float | None
    ts: int
    request_id: str | None
    position: int | None

    @classmethod
    def of(cls, event: "Event | UserEvent") -> "UserEvent":
        if isinstance(event, UserEvent):
            return event
        return cls(event.event_id, event.user_id, event.item_id, event.type, event.value, event.ts,
                   event.request_id, event.position)  # fmt: skip


def update_sequence(sequence: UserSequence, event: Event | UserEvent, spec: FeatureSpec) -> UserSequence:
    """Insert an interaction at its event-time place and keep the newest `spec.sequence_length`."""
    entries = sequence.entries
    if not event.type.is_interaction or event.event_id in [entry.event_id for entry in entries]:
        return sequence
    entry = SequenceEntry(event.event_id, event.item_id, event.type, event.ts, event.value)
    if not entries or entries[-1].order <= entry.order:  # the common case: the user's newest event
        return UserSequence((*entries, entry)[-spec.sequence_length :])
    inserted = list(entries)
    bisect.insort(inserted, entry, key=lambda e: e.order)
    return UserSequence(tuple(inserted[-spec.sequence_length :]))


def _count(counts: dict[str, int], event_type: EventType) -> dict[str, int]:
    counted, name = dict(counts), event_type._value_
    counted[name] = counts.get(name, 0) + 1
    return counted


def _min(current: int | None, ts: int) -> int:
    return ts if current is None else min(current, ts)


def _max(current: int | None, ts: int) -> int:
    return ts if current is None else max(current, ts)


def update_user_features(features: UserFeatures, event: Event | UserEvent, spec: FeatureSpec) -> UserFeatures:
    rated = event.type is EventType.RATING
    return UserFeatures(
        event_counts=_count(features.event_counts, event.type),
        rating_count=features.rating_count + rated,
        rating_sum=features.rating_sum + event.value if rated else features.rating_sum,
        last_ts=_max(features.last_ts, event.ts),
        first_ts=_min(features.first_ts, event.ts),
    )


def decay(score: float, from_ts: int, to_ts: int, spec: FeatureSpec) -> float:
    return score * 2.0 ** (-(to_ts - from_ts) / spec.popularity_half_life_ms)


def _bucket(ts: int) -> int:
    return ts - ts % WINDOW_BUCKET_MS


class ItemEvent(NamedTuple):
    """What item features read of an event. The stream sends it from its user stage to its item
    stage as a row of plain values (`row_of`, `of_row`): rebuilding an `Event` cost more than the
    features, and pickling a NamedTuple that holds an enum three times more than a plain row."""

    item_id: str
    type: EventType
    ts: int
    value: float | None

    @staticmethod
    def row_of(event: Event) -> tuple[str, str, int, float | None]:
        return event.item_id, event.type._value_, event.ts, event.value

    @classmethod
    def of_row(cls, item_id: str, kind: str, ts: int, value: float | None) -> "ItemEvent":
        return cls(item_id, _EVENT_TYPES[kind], ts, value)


def _recent(recent: tuple[tuple[int, int], ...], event: Event | ItemEvent, last_ts: int) -> tuple[tuple[int, int], ...]:
    """The interaction counts per bucket of the 24 hours up to `last_ts`. Every event prunes (an
    impression moves `last_ts` too), so the buckets depend on which events came, not their order."""
    oldest = _bucket(last_ts) - max(WINDOWS_MS.values()) + WINDOW_BUCKET_MS
    bucket = _bucket(event.ts)
    counted = event.type.is_interaction and bucket >= oldest
    if recent and recent[0][0] >= oldest:
        if not counted:
            return recent
        if recent[-1][0] == bucket:  # the common case: another event in the newest bucket
            return (*recent[:-1], (bucket, recent[-1][1] + 1))
    counts = {start: count for start, count in recent if start >= oldest}
    if counted:
        counts[bucket] = counts.get(bucket, 0) + 1
    return tuple(sorted(counts.items()))


def update_item_features(features: ItemFeatures, event: Event | ItemEvent, spec: FeatureSpec) -> ItemFeatures:
    weight = spec.interaction_weights[event.type]
    previous_ts = event.ts if features.popularity_ts is None else features.popularity_ts
    # Decay everything to the newer of the two times, so a late event adds what it would have on time.
    anchor = max(previous_ts, event.ts)
    popularity = decay(features.popularity, previous_ts, anchor, spec) + decay(weight, event.ts, anchor, spec)
    last_ts = _max(features.last_ts, event.ts)
    rated = event.type is EventType.RATING
    return ItemFeatures(
        event_counts=_count(features.event_counts, event.type),
        rating_count=features.rating_count + rated,
        rating_sum=features.rating_sum + event.value if rated else features.rating_sum,
        last_ts=last_ts,
        popularity=popularity,
        popularity_ts=anchor,
        recent=_recent(features.recent, event, last_ts),
    )


def popularity_at(features: ItemFeatures, ts: int, spec: FeatureSpec) -> float:
    """The item's popularity at time `ts` (not before its newest event)."""
    if features.popularity_ts is None:
        return 0.0
    return decay(features.popularity, features.popularity_ts, max(ts, features.popularity_ts), spec)


def trending(
    items: Iterable[tuple[str, ItemFeatures]], at_ts: int, k: int, spec: FeatureSpec
) -> list[tuple[str, float]]:
    """The k most popular items at `at_ts`, most popular first; ties broken by item_id."""
    scored = ((popularity_at(features, at_ts, spec), item_id) for item_id, features in items)
    top = heapq.nsmallest(k, scored, key=lambda pair: (-pair[0], pair[1]))
    return [(item_id, score) for score, item_id in top]


def seen_entry(event: Event | UserEvent) -> tuple[str, int] | None:
    """What an event adds to its user's seen set: (item_id, event time) of an interaction, else None."""
    return (event.item_id, event.ts) if event.type.is_interaction else None


def update_seen(seen: dict[str, int], entry: tuple[str, int], spec: FeatureSpec) -> dict[str, int]:
    """A user's seen set, item_id -> newest interaction time, with `entry` added: at most
    `spec.seen_capacity` items, those with the newest (time, item_id). The result is the same in
    any order of entries, which lets the stream leave the set to Redis (REDIS_FORMAT.md, `user_seen`)."""
    item_id, ts = entry
    updated = dict(seen)
    updated[item_id] = max(ts, seen.get(item_id, ts))
    if len(updated) > spec.seen_capacity:
        del updated[min(updated, key=lambda item: (updated[item], item))]  # str order is UTF-8 byte order, as Redis's
    return updated


def unique_events(events: Iterable[Event]) -> Iterable[Event]:
    """The first event of every event_id, as the stream's deduplication keeps it."""
    seen: set[str] = set()
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            yield event
