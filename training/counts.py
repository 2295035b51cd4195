"""The counts of the training data that the ranker's features read: item co-visitation and
interactions per item, as the bundle holds them, and as they stood at any moment before, for the
ranker's own training rows.

A training row must see the counts as the service would have had them then: the counts of the
whole training data know the row's future, its own (the item it takes next looks co-visited) and
everyone else's (the pairs that only became common later), and a ranker trained on them learns to
trust co-visitation far more than it can when it serves, where counts hold the past only.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schemas.runtime.covisitation import CoVisitation
from schemas.runtime.model_inputs import Vocabulary
from training.data import Histories, Row

COVISITATION_WINDOW = 5
"""b counts as following a when it comes within this many interactions after a (as the item
co-occurrence baseline counts)."""
COVISITATION_NEIGHBOURS = 500
"""Most followers kept per item in a bundle."""


def item_sequences(rows: Sequence[Row], vocabulary: Vocabulary) -> dict[str, np.ndarray]:
    """Each user's interaction items as item indices, in time order."""
    histories = Histories(rows)
    return {
        user_id: vocabulary.item_indices(row.event.item_id for row in histories.interactions(user_id))
        for user_id in histories.rows
    }


class CountsOverTime:
    """How many times each key had occurred before a moment. Each occurrence is stored as one sorted
    number, key * R + the rank of its time among the distinct times, so a count is two binary searches."""

    def __init__(self, keys: np.ndarray, times: np.ndarray):
        self.times = np.unique(times)
        self.ranks = len(self.times) + 1
        self.occurrences = np.sort(keys * self.ranks + np.searchsorted(self.times, times))

    def before(self, keys: np.ndarray, moments: np.ndarray) -> np.ndarray:
        """Occurrences of each of `keys` at times before its moment (`moments` broadcast to keys) -> float32."""
        start = keys * self.ranks
        end = start + np.searchsorted(self.times, np.broadcast_to(moments, keys.shape), side="left")
        return (np.searchsorted(self.occurrences, end) - np.searchsorted(self.occurrences, start)).astype(np.float32)


@dataclass(frozen=True)
class TrainingCounts:
    """The bundle's counts (`covisitation`, `popularity`), and the occurrences behind them with
    their times (`pair_counts`, `interactions` at a moment: the `ItemCounts` of training rows)."""

    covisitation: CoVisitation
    popularity: np.ndarray
    """[vocabulary size] float32 interactions per item index."""
    pairs_over_time: CountsOverTime
    """Key a * size + b, at the time of b's interaction, for every b within the window after a."""
    items_over_time: CountsOverTime

    @classmethod
    def of(cls, rows: Sequence[Row], vocabulary: Vocabulary) -> "TrainingCounts":
        size, histories = vocabulary.size, Histories(rows)
        pair_keys, pair_times, item_keys, item_times = [], [], [], []
        for user_id in histories.rows:
            interactions = histories.interactions(user_id)
            items = vocabulary.item_indices(row.event.item_id for row in interactions)
            times = [row.event.ts for row in interactions]
            item_keys.append(items)
            item_times.append(np.array(times, np.int64))
            for first, second in _following_positions(len(items), COVISITATION_WINDOW):
                if items[first] != items[second]:
                    pair_keys.append(int(items[first]) * size + int(items[second]))
                    pair_times.append(times[second])
        covisitation, popularity = item_counts(rows, vocabulary)
        empty = np.zeros(0, np.int64)
        return cls(
            covisitation,
            popularity,
            CountsOverTime(np.array(pair_keys, np.int64), np.array(pair_times, np.int64)),
            CountsOverTime(np.concatenate([empty, *item_keys]).astype(np.int64), np.concatenate([empty, *item_times])),
        )

    def pair_counts(self, moments: np.ndarray, behaviours, candidates) -> np.ndarray:
        keys = behaviours[:, None, :].astype(np.int64) * self.covisitation.size + candidates[:, :, None]
        counted = self.pairs_over_time.before(keys, moments[:, None, None])
        return np.where(behaviours[:, None, :] > 0, counted, np.float32(0))

    def interactions(self, moments: np.ndarray, candidates) -> np.ndarray:
        return self.items_over_time.before(candidates.astype(np.int64), moments[:, None])


def _following_positions(count: int, window: int):
    for first in range(count):
        for second in range(first + 1, min(count, first + 1 + window)):
            yield first, second


def item_counts(rows: Sequence[Row], vocabulary: Vocabulary) -> tuple[CoVisitation, np.ndarray]:
    """The co-visitation table and the interactions per item index of `rows`, as a bundle holds them."""
    sequences = item_sequences(rows, vocabulary)
    covisitation = CoVisitation.of(sequences.values(), vocabulary.size, COVISITATION_WINDOW, COVISITATION_NEIGHBOURS)
    popularity = np.zeros(vocabulary.size, np.float32)
    for items in sequences.values():
        np.add.at(popularity, items, 1)
    return covisitation, popularity
