"""Item co-visitation: how often one item came soon after another in users' interactions.

`counts[a, b]` is the number of times, over every user's interactions in time order, that item b
came within `window` interactions after item a. Training counts it over its rows, the bundle holds
it (`save`, `load`), and the ranker reads it through `pair_counts`, offline and online alike: for
each candidate, the counts that follow each behaviour of the user's sequence.

Stored sparse: the nonzero (a, b) pairs as sorted keys `a * size + b` with their counts, at most
`neighbours` per item a (its largest). Sorted keys make each item a's followers one contiguous
slice, so a request reads its behaviours' slices and keeps the followers that are in its pool.
"""

from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from schemas.runtime.model_inputs import PADDING

KEYS_FILE, COUNTS_FILE = "covisitation_keys.npy", "covisitation_counts.npy"


def following_pairs(items: Sequence[int], window: int) -> Iterable[tuple[int, int]]:
    """(a, b) for every b within `window` items after a in `items`, a different item."""
    for position, first in enumerate(items):
        for second in items[position + 1 : position + 1 + window]:
            if second != first:
                yield int(first), int(second)


class CoVisitation:
    """Sparse co-visitation counts over item indices 0..size-1."""

    def __init__(self, size: int, keys: np.ndarray, counts: np.ndarray):
        self.size = size
        self.keys = keys
        """[nnz] int64, sorted: a * size + b."""
        self.counts = counts
        """[nnz] float32: counts[a, b] for each key."""

    @classmethod
    def of(cls, sequences: Iterable[Sequence[int]], size: int, window: int, neighbours: int | None) -> "CoVisitation":
        """Count each sequence (item indices, oldest first): b within `window` after a adds 1 to (a, b);
        keep each item's `neighbours` largest counts (all with None). An item never follows itself."""
        pairs: Counter = Counter()
        for items in sequences:
            pairs.update(first * size + second for first, second in following_pairs(items, window))
        return cls.of_counts(size, pairs).strongest(neighbours)

    @classmethod
    def of_counts(cls, size: int, counts: Counter) -> "CoVisitation":
        """From key -> count (keys `first * size + second`)."""
        keys = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        order = np.argsort(keys, kind="stable")
        return cls(size, keys[order], np.fromiter(counts.values(), dtype=np.float32, count=len(counts))[order])

    def strongest(self, neighbours: int | None) -> "CoVisitation":
        """The same counts with each item's `neighbours` largest only (ties: the smaller item index)."""
        order = np.lexsort((self.keys, -self.counts, self.keys // self.size))
        keys, counts = self.keys[order], self.counts[order]
        if neighbours is not None:
            rows = keys // self.size
            starts = np.searchsorted(rows, rows, side="left")
            kept = np.arange(len(keys)) - starts < neighbours
            keys, counts = keys[kept], counts[kept]
        by_key = np.argsort(keys, kind="stable")
        return CoVisitation(self.size, keys[by_key], counts[by_key])

    def __len__(self) -> int:
        return len(self.keys)

    def pair_counts(self, behaviours: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """behaviours [B, L] and candidates [B, M] item indices -> [B, M, L] float32: how often each
        candidate followed each behaviour (0 where the behaviour is padding, and for items added
        after the counts: indices from `size` on)."""
        behaviours = np.where(behaviours < self.size, behaviours, PADDING)
        counts = np.empty((len(behaviours), candidates.shape[1], behaviours.shape[1]), np.float32)
        for row, (items, pool) in enumerate(zip(behaviours, candidates, strict=True)):
            counts[row] = self._pool_counts(items, pool)
        return counts

    def _pool_counts(self, items: np.ndarray, pool: np.ndarray) -> np.ndarray:
        """items [L], pool [M] -> [M, L]: every follower of every behaviour, kept where it is in the pool."""
        starts, ends = self._row_starts[items], self._row_starts[items + 1]
        lengths = np.where(items != PADDING, ends - starts, 0)
        behaviour = np.repeat(np.arange(len(items)), lengths)
        entry = np.arange(len(behaviour)) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        distinct, place = np.unique(pool, return_inverse=True)
        slot = np.full(max(self.size, distinct[-1] + 1), -1, np.int64)  # added items follow none
        slot[distinct] = np.arange(len(distinct))
        found = slot[self._followers[entry]]
        hit = found >= 0
        counts = np.zeros((len(distinct), len(items)), np.float32)
        counts[found[hit], behaviour[hit]] = self.counts[entry[hit]]
        return counts[place]

    def following(self, items: Iterable[int], weights: Iterable[float] | None = None) -> np.ndarray:
        """[size] float32: for every item b, the sum over `items` a of counts[a, b], each times a's
        weight (1 without `weights`)."""
        items = np.fromiter(items, np.int64)
        weights = np.ones(len(items), np.float32) if weights is None else np.fromiter(weights, np.float32)
        starts, ends = self._row_starts[items], self._row_starts[items + 1]
        lengths = ends - starts
        entry = np.arange(lengths.sum()) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        weighted = self.counts[entry] * np.repeat(weights, lengths)
        return np.bincount(self._followers[entry], weighted, minlength=self.size).astype(np.float32)

    def co_watched(self, item: int) -> np.ndarray:
        """[size] float32: for every item b, counts[item, b] + counts[b, item] (of the counts kept:
        each item's strongest followers)."""
        return self.following([item]) + self._transposed.following([item])

    @cached_property
    def _transposed(self) -> "CoVisitation":
        """counts[b, a] at key a * size + b: the items each item followed."""
        keys = self._followers * self.size + self.keys // self.size
        order = np.argsort(keys, kind="stable")
        return CoVisitation(self.size, keys[order], self.counts[order])

    @cached_property
    def _row_starts(self) -> np.ndarray:
        """[size + 1]: item a's followers are keys[_row_starts[a]:_row_starts[a + 1]]."""
        return np.searchsorted(self.keys, np.arange(self.size + 1, dtype=np.int64) * self.size)

    @cached_property
    def _followers(self) -> np.ndarray:
        """[nnz]: b of each key."""
        return self.keys % self.size

    def save(self, directory: Path) -> None:
        np.save(directory / KEYS_FILE, self.keys, allow_pickle=False)
        np.save(directory / COUNTS_FILE, self.counts, allow_pickle=False)

    @classmethod
    def load(cls, directory: Path, size: int) -> "CoVisitation":
        keys = np.load(directory / KEYS_FILE, allow_pickle=False)
        return cls(size, keys, np.load(directory / COUNTS_FILE, allow_pickle=False))
