"""Model inputs: how a user's state, a time and the catalogue become the arrays the models read.

Training encodes its samples with these functions and serving encodes the live Redis state with
the same ones, so a model sees the same numbers offline and online. The vocabulary travels in the
model bundle: a bundle is always read with the vocabulary it was trained with.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import orjson

from schemas.catalogue import CatalogueItem
from schemas.events import MAX_RATING, MIN_RATING, EventType
from schemas.features import UserFeatures

PADDING, UNKNOWN_ITEM = 0, 1
"""Reserved item indices: padding of short sequences, and items the model has not seen."""
FIRST_ITEM = 2
MAX_GENRES = 8
YEAR_BUCKETS = 32
"""Release years in 5-year buckets from 1900 (bucket 0: unknown year)."""
EVENT_TYPES = tuple(EventType)
RATING_BUCKETS = int((MAX_RATING - MIN_RATING) * 2) + 1
BEHAVIOUR_KINDS = 1 + len(EVENT_TYPES) + RATING_BUCKETS
"""What a user did with a sequence item: 0 pads, then one kind per event type, then one per half-star rating."""
USER_FEATURES = ("log_interactions", "rating_mean_centred", "has_ratings")
NEUTRAL_RATING = 3.0


@dataclass(frozen=True)
class Vocabulary:
    """Item ids and genres known to a model, with the attributes its item tables hold."""

    item_ids: tuple[str, ...]
    genres: tuple[str, ...]

    @classmethod
    def of(cls, catalogue: Iterable[CatalogueItem]) -> "Vocabulary":
        items = sorted(catalogue, key=lambda item: item.item_id)
        genres = sorted({genre for item in items for genre in item.genres})
        return cls(tuple(item.item_id for item in items), tuple(genres))

    @property
    def size(self) -> int:
        """Rows of an item table: the items and the two reserved indices."""
        return len(self.item_ids) + FIRST_ITEM

    def item_indices(self, item_ids: Iterable[str]) -> np.ndarray:
        """[N] int32 indices; an item outside the vocabulary is UNKNOWN_ITEM."""
        lookup = self._lookup
        return np.fromiter((lookup.get(item_id, UNKNOWN_ITEM) for item_id in item_ids), dtype=np.int32)

    def item_id(self, index: int) -> str:
        return self.item_ids[index - FIRST_ITEM]

    @cached_property
    def _lookup(self) -> dict[str, int]:
        return {item_id: index for index, item_id in enumerate(self.item_ids, start=FIRST_ITEM)}

    def to_json(self) -> bytes:
        return orjson.dumps({"item_ids": self.item_ids, "genres": self.genres})

    @classmethod
    def from_json(cls, data: bytes) -> "Vocabulary":
        raw = orjson.loads(data)
        return cls(tuple(raw["item_ids"]), tuple(raw["genres"]))


def year_bucket(year: int | None) -> int:
    if year is None:
        return 0
    return int(np.clip((year - 1900) // 5 + 1, 1, YEAR_BUCKETS - 1))


def item_tables(vocabulary: Vocabulary, catalogue: Mapping[str, CatalogueItem]) -> tuple[np.ndarray, np.ndarray]:
    """The models' constant item attributes, one row per item index:
    genre indices [vocabulary.size, MAX_GENRES] int32 (1-based, 0 pads) and year buckets [vocabulary.size] int32."""
    genre_index = {genre: index for index, genre in enumerate(vocabulary.genres, start=1)}
    genres = np.zeros((vocabulary.size, MAX_GENRES), dtype=np.int32)
    years = np.zeros(vocabulary.size, dtype=np.int32)
    for index, item_id in enumerate(vocabulary.item_ids, start=FIRST_ITEM):
        item = catalogue.get(item_id)
        if item is None:
            continue
        known = [genre_index[genre] for genre in item.genres if genre in genre_index][:MAX_GENRES]
        genres[index, : len(known)] = known
        years[index] = year_bucket(item.year)
    return genres, years


def behaviour_kind(event_type: str, value: float | None) -> int:
    if event_type == EventType.RATING and value is not None:
        return 1 + len(EVENT_TYPES) + round((min(max(value, MIN_RATING), MAX_RATING) - MIN_RATING) * 2)
    return 1 + EVENT_TYPES.index(EventType(event_type))


Behaviour = tuple[str, str, float | None]
"""(item_id, event type, value) of one sequence entry."""


def sequence_arrays(
    vocabulary: Vocabulary, sequences: Sequence[Sequence[Behaviour]], length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence's newest `length` entries (given oldest first), left-padded:
    item indices [B, length] int32 (PADDING pads) and behaviour kinds [B, length] int32 (0 pads)."""
    items = np.zeros((len(sequences), length), dtype=np.int32)
    kinds = np.zeros((len(sequences), length), dtype=np.int32)
    for row, entries in enumerate(sequences):
        newest = entries[-length:]
        if newest:
            items[row, length - len(newest) :] = vocabulary.item_indices(entry[0] for entry in newest)
            kinds[row, length - len(newest) :] = [behaviour_kind(entry[1], entry[2]) for entry in newest]
    return items, kinds


def user_feature_vector(features: UserFeatures | None) -> list[float]:
    """USER_FEATURES of one user, from the user features stored in Redis or held by a sample row."""
    if features is None:
        return [0.0, 0.0, 0.0]
    interactions = sum(features.event_counts.values())
    rating_count = features.rating_count
    mean = features.rating_sum / rating_count if rating_count else NEUTRAL_RATING
    return [math.log1p(interactions), mean - NEUTRAL_RATING, float(rating_count > 0)]


def user_feature_matrix(features: Sequence[UserFeatures | None]) -> np.ndarray:
    """[B, len(USER_FEATURES)] float32."""
    return np.array([user_feature_vector(row) for row in features], dtype=np.float32).reshape(-1, len(USER_FEATURES))


def hour_of_day(ts_ms: Iterable[int]) -> np.ndarray:
    """[B] int32 hour (UTC) of each time: the context feature."""
    return (np.fromiter(ts_ms, dtype=np.int64) // 3_600_000 % 24).astype(np.int32)
