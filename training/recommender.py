"""Models in memory behind the served pipeline's `Recommender` interface: what `LoadedBundle` is in
the service, so training evaluates (and builds the ranker's training rows with) exactly the
pipeline the service runs."""

import numpy as np

from schemas.runtime.ann import ItemIndex
from schemas.runtime.covisitation import CoVisitation
from schemas.runtime.model_inputs import FIRST_ITEM, ScoreScale, SequenceArrays, Vocabulary
from schemas.runtime.pipeline import covisitation_damping
from training.counts import TrainingCounts
from training.models import Ranker, SequentialRetrieval

CALL_ROWS = 256
"""Rows per model call: bounds the memory of a call over [rows, candidates, length] pairs."""


class InMemoryRecommender:
    def __init__(
        self,
        retrieval: SequentialRetrieval,
        ranker: Ranker | None,
        vocabulary: Vocabulary,
        counts: TrainingCounts,
        exact_max_items: int,
    ):
        self.retrieval, self.vocabulary = retrieval, vocabulary
        self.added_index = None  # training's vocabulary holds every item it evaluates
        self.sequence_length, self.exact_max_items = retrieval.length, exact_max_items
        self._use(ranker)
        self._count(counts.covisitation, counts.popularity)
        self.refresh()

    def refresh(self) -> None:
        """Take the retrieval model's item vectors as they are now (it may have trained since)."""
        indices = np.arange(FIRST_ITEM, self.vocabulary.size)
        self.embeddings = np.asarray(self.retrieval.item_vectors(indices), np.float32)
        """[items, d]: row i is item vocabulary.item_ids[i]."""
        self.index = ItemIndex(self.exact_max_items).index(self.embeddings, list(self.vocabulary.item_ids))
        self.score_scale = ScoreScale.of(self.embeddings)

    def _use(self, ranker: Ranker | None) -> None:
        self.ranker = ranker
        self.ranker_behaviours = min(ranker.behaviours if ranker else self.sequence_length, self.sequence_length)

    def with_ranker(self, ranker: Ranker | None) -> "InMemoryRecommender":
        """The same retrieval and tables with another ranker (None: retrieval only)."""
        other = object.__new__(InMemoryRecommender)
        other.__dict__ = dict(self.__dict__)
        other._use(ranker)
        return other

    def with_item_counts(self, covisitation: CoVisitation, popularity: np.ndarray) -> "InMemoryRecommender":
        """The same models with other counts for the pools' co-visitation candidates and the served
        ranker's features: e.g. other users' only, as the ranker's training pools need."""
        other = object.__new__(InMemoryRecommender)
        other.__dict__ = dict(self.__dict__)
        other._count(covisitation, popularity)
        return other

    def _count(self, covisitation: CoVisitation, popularity: np.ndarray) -> None:
        self.covisitation, self.popularity = covisitation, popularity
        self.covisitation_damping = covisitation_damping(popularity, covisitation.size)

    def user_vectors(self, sequences: SequenceArrays) -> np.ndarray:
        parts = [
            self.retrieval.user_vectors(*(array[start : start + CALL_ROWS] for array in sequences))
            for start in range(0, len(sequences.items), CALL_ROWS)
        ]
        return np.concatenate([np.asarray(part) for part in parts])

    def score(self, sequences: SequenceArrays, candidates, features, pairs) -> tuple[np.ndarray, np.ndarray]:
        if self.ranker is None:
            raise ValueError("a retrieval-only recommender cannot rank")
        scores, attention = [], []
        for start in range(0, len(candidates), CALL_ROWS):
            part = slice(start, start + CALL_ROWS)
            served, weights = self.ranker.served_scores(
                *(array[part] for array in sequences), candidates[part], features[part], pairs[part]
            )
            scores.append(np.asarray(served))
            attention.append(
                np.zeros((*candidates[part].shape, pairs.shape[2]), np.float32)
                if weights is None
                else np.asarray(weights)
            )
        return np.concatenate(scores), np.concatenate(attention)
