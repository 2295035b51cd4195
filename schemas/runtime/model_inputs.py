"""Model inputs: how a user's state, a time and the catalogue become the arrays the models read.

Training encodes its samples with these functions and serving encodes the live Redis state with
the same ones, so a model sees the same numbers offline and online. The vocabulary travels in the
model bundle: a bundle is always read with the vocabulary it was trained with.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import repeat
from typing import NamedTuple

import numpy as np
import orjson

from schemas.catalogue import CatalogueItem
from schemas.events import MAX_RATING, MIN_RATING, EventType
from schemas.features import SequenceEntry, UserFeatures

PADDING, UNKNOWN_ITEM = 0, 1
"""Reserved item indices: padding of short sequences, and items the model has not seen."""
FIRST_ITEM = 2
MAX_GENRES = 8
YEAR_BUCKETS = 32
"""Release years in 5-year buckets from 1900 (bucket 0: unknown year)."""
AGE_BUCKETS = 32
"""Ages and time gaps in log2 buckets of seconds: 0 s, 1 s, 2-3 s, ... up to about 68 years (the
models' `age_buckets`, in TensorFlow for training and in NumPy for serving)."""
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
        return np.fromiter(map(self._lookup.get, item_ids, repeat(UNKNOWN_ITEM)), dtype=np.int32)

    def item_id(self, index: int) -> str:
        return self.item_ids[index - FIRST_ITEM]

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._lookup

    def extended(self, item_ids: Sequence[str]) -> "Vocabulary":
        """This vocabulary with `item_ids` after its items (items new since training): every index it had stays."""
        grown = Vocabulary((*self.item_ids, *item_ids), self.genres)
        # its lookup from this one's, now rather than in the first request to need it
        grown.__dict__["_lookup"] = self._lookup | dict(zip(item_ids, range(self.size, grown.size), strict=True))
        return grown

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
    return item_content(vocabulary, [None] * FIRST_ITEM + [catalogue.get(item_id) for item_id in vocabulary.item_ids])


def item_content(vocabulary: Vocabulary, items: Sequence[CatalogueItem | None]) -> tuple[np.ndarray, np.ndarray]:
    """The rows `item_tables` holds for `items` (None: nothing known): genre indices [N, MAX_GENRES]
    int32, genres outside the vocabulary left out, and year buckets [N] int32."""
    genre_index = {genre: index for index, genre in enumerate(vocabulary.genres, start=1)}
    genres = np.zeros((len(items), MAX_GENRES), dtype=np.int32)
    years = np.zeros(len(items), dtype=np.int32)
    for row, item in enumerate(items):
        if item is None:
            continue
        known = [genre_index[genre] for genre in item.genres if genre in genre_index][:MAX_GENRES]
        genres[row, : len(known)] = known
        years[row] = year_bucket(item.year)
    return genres, years


_TYPE_KINDS = {event_type: 1 + n for n, event_type in enumerate(EVENT_TYPES)}


def behaviour_kind(event_type: str, value: float | None) -> int:
    if event_type == EventType.RATING and value is not None:
        return 1 + len(EVENT_TYPES) + round((min(max(value, MIN_RATING), MAX_RATING) - MIN_RATING) * 2)
    # EventType's members hash and compare as their values, so the string finds its kind without
    # building the member: an enum call costs more than the lookup, once per behaviour of a request.
    return _TYPE_KINDS[event_type]


class SequenceArrays(NamedTuple):
    """Sequences as model inputs, newest entry last, left-padded: item indices [B, L] int32
    (PADDING pads), behaviour kinds [B, L] int32 (0 pads), and ages [B, L] float32, the seconds
    from each behaviour to the moment of the request (0 where padded)."""

    items: np.ndarray
    kinds: np.ndarray
    ages: np.ndarray


def sequence_arrays(
    vocabulary: Vocabulary, sequences: Sequence[Sequence[SequenceEntry]], now_ms: Sequence[int], length: int
) -> SequenceArrays:
    """Each sequence's newest `length` entries (given oldest first) as of `now_ms` (one time per sequence)."""
    items = np.zeros((len(sequences), length), dtype=np.int32)
    kinds = np.zeros((len(sequences), length), dtype=np.int32)
    ages = np.zeros((len(sequences), length), dtype=np.float32)
    for row, (entries, now) in enumerate(zip(sequences, now_ms, strict=True)):
        newest = entries[-length:]
        if newest:
            first = length - len(newest)
            items[row, first:] = vocabulary.item_indices(entry.item_id for entry in newest)
            kinds[row, first:] = [behaviour_kind(entry.type, entry.value) for entry in newest]
            ages[row, first:] = [max(now - entry.ts, 0) / 1000 for entry in newest]
    return SequenceArrays(items, kinds, ages)


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


COVISITATION_SPANS = (1, 5, 20)
"""The ranker sums a candidate's co-visitation counts over the user's newest 1, 5 and 20 behaviours."""
RANKER_FEATURES = (
    "retrieval_score",
    *(f"covisitation_newest_{span}" for span in COVISITATION_SPANS),
    "log_popularity",
    "trending_score",
    "in_trending",
    *USER_FEATURES,
)
"""Per candidate, besides its embedding and the attention over the sequence: its retrieval score
standardised over the catalogue for this user; log1p of its co-visitation counts after the newest
behaviours; log1p of its interactions in the training data; log2 of its trending popularity (0 and
in_trending 0 when it is not trending); the user features."""


@dataclass(frozen=True)
class ScoreScale:
    """Where a user's retrieval scores lie over the whole catalogue, from the item vectors' mean and
    covariance: for user vector u, scores have mean u·mean and variance uᵀ·covariance·u. The ranker
    reads scores in that scale, comparable from user to user, without scoring every item."""

    mean: np.ndarray
    """[d] float64."""
    covariance: np.ndarray
    """[d, d] float64."""

    @classmethod
    def of(cls, item_vectors: np.ndarray) -> "ScoreScale":
        """item_vectors [N, d]: the vectors of the catalogue's items."""
        vectors = np.asarray(item_vectors, dtype=np.float64)
        return cls(vectors.mean(axis=0), np.cov(vectors, rowvar=False, bias=True))

    def standardised(self, scores: np.ndarray, users: np.ndarray) -> np.ndarray:
        """scores [B, M] of users [B, d] -> [B, M] float32 standard scores."""
        users = np.asarray(users, dtype=np.float64)
        variance = np.einsum("bd,de,be->b", users, self.covariance, users)
        return ((scores - (users @ self.mean)[:, None]) / np.sqrt(np.maximum(variance, 1e-12))[:, None]).astype(
            np.float32
        )


def ranker_features(
    retrieval: np.ndarray, pair_counts: np.ndarray, popularity: np.ndarray, trending: np.ndarray, user_features
) -> np.ndarray:
    """RANKER_FEATURES of every candidate: retrieval [B, M] standard scores, pair_counts [B, M, L]
    (newest behaviour last), popularity [B, M] interaction counts, trending [B, M] popularity (0 when
    not trending), user_features [B, F] -> [B, M, len(RANKER_FEATURES)] float32."""
    rows, candidates = retrieval.shape
    per_user = np.asarray(user_features, dtype=np.float32)
    columns = [
        retrieval,
        *(np.log1p(pair_counts[:, :, -span:].sum(axis=2)) for span in COVISITATION_SPANS),
        np.log1p(popularity),
        np.where(trending > 0, np.log2(np.maximum(trending, 1e-30)), 0.0),
        (trending > 0).astype(np.float32),
    ]
    features = np.stack(columns, axis=2).astype(np.float32)
    return np.concatenate([features, np.broadcast_to(per_user[:, None, :], (rows, candidates, per_user.shape[1]))], 2)


def pair_inputs(pair_counts: np.ndarray) -> np.ndarray:
    """What the ranker's attention reads of each (candidate, behaviour) pair: log1p of its co-visitation count."""
    return np.log1p(pair_counts).astype(np.float32)
