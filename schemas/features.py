"""The features' contract: their parameters (`FeatureSpec`, one unit each) and the value types the
stream keeps, stores in Redis and logs, and that training and serving read.

The update functions over these values are `schemas.runtime.features` and
`schemas.runtime.streaming`. Every class the feature job's Flink state holds is defined here
(`UserState`, `ItemState`, `TrendingState`, `RecentEventIds` and what they hold): checkpoints
pickle them by module and name, so moving or renaming one is a state migration (README,
"Upgrading"), and a test checks that no checkpointed class lives elsewhere. They are slotted
dataclasses that nothing mutates: every function builds new ones. They are not declared frozen
because a frozen dataclass sets each field through object.__setattr__, and the stream builds
several per event: that was one of the largest costs of its Python operators.
"""

import hashlib
import math
from array import array
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from schemas.events import Event, EventType
from schemas.validation import json_text

HOUR_MS = 3_600_000
WINDOW_BUCKET_MS = 5 * 60_000

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
    """The parameters of the features, each in one unit, set once (the settings' `pipeline.features`).

    The stream records the spec it runs with beside its checkpoints, in Redis and in every
    sample-log snapshot; training builds rows with the log's spec and records it in the bundle's
    manifest; the service refuses a bundle whose spec is not the stream's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sequence_length: int = Field(50, ge=1, le=1000, description="Interactions kept in each user's live sequence.")
    popularity_half_life_ms: int = Field(
        24 * HOUR_MS, gt=0, description="Half-life of an item's decayed popularity, in milliseconds."
    )
    interaction_weights: Annotated[dict[EventType, float], BeforeValidator(json_text)] = Field(
        default_factory=lambda: dict(DEFAULT_INTERACTION_WEIGHTS),
        description="How much one event of each type adds to an item's popularity.",
    )
    trending_size: int = Field(100, ge=1, description="Items in the trending list.")
    recent_window_ms: int = Field(
        24 * HOUR_MS,
        ge=WINDOW_BUCKET_MS,
        description="How far back an item's interactions per 5-minute bucket are kept, in milliseconds.",
    )
    seen_capacity: int = Field(
        2000,
        ge=1,
        description="Items kept in each user's seen set (`exclude_seen`): those of the newest interactions; a user "
        "with more gets a seen filter of all of them beside it (schemas/REDIS_FORMAT.md).",
    )

    @field_validator("interaction_weights")
    @classmethod
    def _weighs_every_type(cls, weights: dict[EventType, float]) -> dict[EventType, float]:
        if missing := sorted(set(EventType) - set(weights)):
            raise ValueError(f"no weight for {', '.join(missing)}")
        return weights

    def differences(self, other: "FeatureSpec") -> str:
        """The fields in which `other` differs, as `name this -> other`; empty when equal."""
        mine, theirs = self.model_dump(mode="json"), other.model_dump(mode="json")
        return ", ".join(f"{name} {mine[name]} -> {theirs[name]}" for name in mine if mine[name] != theirs[name])


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
    """Interactions per 5-minute bucket (bucket start, count), for `FeatureSpec.recent_window_ms` up to `last_ts`."""

    def interactions_within(self, window_ms: int) -> int:
        """Interactions in the `window_ms` up to `last_ts` (in whole 5-minute buckets)."""
        if self.last_ts is None:
            return 0
        oldest = bucket_start(self.last_ts) - window_ms + WINDOW_BUCKET_MS
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


def bucket_start(ts: int) -> int:
    """The start of the 5-minute window bucket holding `ts`."""
    return ts - ts % WINDOW_BUCKET_MS


@dataclass(slots=True)
class UserState(PicklesAsFields):
    sequence: UserSequence = field(default_factory=UserSequence)
    features: UserFeatures = field(default_factory=UserFeatures)
    version: int = 0


class RecentEventIds:
    """A user's newest `capacity` event ids, to drop redeliveries, which arrive close behind the
    original in the user's partition. Kept as 64-bit digests (a false match is a 1 in 2^64 / capacity
    chance): the stream checkpoints them with each changed user, as one string of 8 bytes per id.
    They are held in that form too (an array, oldest first), so that pickling them, once per batch
    for every user the batch changed, is one copy of the bytes rather than a walk over the ids."""

    __slots__ = ("_members", "_order", "capacity")

    def __init__(self, capacity: int, digests: bytes = b""):
        self.capacity = capacity
        self._order = array("Q", digests)[-capacity:]
        self._members = set(self._order)

    def remember(self, event_id: str) -> bool:
        """Remember `event_id`; False if it is already remembered (a redelivery)."""
        digest = int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")
        if digest in self._members:
            return False
        if len(self._order) == self.capacity:
            self._members.discard(self._order.pop(0))
        self._order.append(digest)
        self._members.add(digest)
        return True

    def __reduce__(self):
        return RecentEventIds, (self.capacity, self._order.tobytes())


@dataclass(slots=True)
class ItemState(PicklesAsFields):
    features: ItemFeatures = field(default_factory=ItemFeatures)
    version: int = 0


@dataclass(slots=True)
class TrendingState(PicklesAsFields):
    candidates: dict[str, float] = field(default_factory=dict)
    """item_id -> rank key of the current top `spec.trending_size`."""
    floor: float = -math.inf
    """At most the lowest rank key among the candidates once they are full: an item ranked no higher cannot enter."""
    at_ts: int = 0
    version: int = 0
