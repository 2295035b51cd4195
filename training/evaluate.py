"""Holdout evaluation of rankers (AUC, GAUC) and of whole retrieval -> ranking pipelines
(Recall, NDCG, HitRate at K over the full catalogue), for the new models, the live ones and baselines."""

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Protocol

import numpy as np

from schemas.ann import ItemIndex
from schemas.model_inputs import FIRST_ITEM, Vocabulary, hour_of_day, sequence_arrays, user_feature_matrix
from training.data import Examples, Query, Row, behaviours, sequence_item_ids
from training.metrics import auc, gauc, ranking_metrics
from training.models import Ranker, TwoTower

CUTOFFS = (10, 50)
QUERY_BATCH = 256
RANK_BATCH = 32
COOCCURRENCE_WINDOW = 10


class ScoresCandidates(Protocol):
    vocabulary: Vocabulary

    def score(self, sequence, kinds, candidates, user_features, hour) -> tuple[np.ndarray, np.ndarray]:
        """[B, L], [B, L], [B, M], [B, F], [B] -> (scores [B, M], attention [B, M, L])."""
        ...


class RetrievesCandidates(ScoresCandidates, Protocol):
    index: ItemIndex

    def user_vectors(self, sequence, kinds, user_features) -> np.ndarray: ...


class KerasRanker:
    """An in-memory ranker behind the same `score` as an exported one."""

    def __init__(self, model: Ranker, vocabulary: Vocabulary):
        self.model, self.vocabulary = model, vocabulary

    def score(self, sequence, kinds, candidates, user_features, hour):
        logits, attention = self.model.score_candidates(
            sequence, kinds, candidates, user_features, hour, training=False
        )
        return 1 / (1 + np.exp(-np.asarray(logits))), attention


class KerasRetrieval:
    """An in-memory two-tower model behind the same `user_vectors` and `index` as an exported one."""

    def __init__(self, model: TwoTower, vocabulary: Vocabulary, exact_max_items: int):
        self.model, self.vocabulary = model, vocabulary
        indices = np.arange(FIRST_ITEM, vocabulary.size, dtype=np.int32)
        self.embeddings = np.asarray(model.item_vectors(indices), dtype=np.float32)
        """[items, d]: row i is item vocabulary.item_ids[i]."""
        self.index = ItemIndex(exact_max_items).index(self.embeddings, list(vocabulary.item_ids))

    def user_vectors(self, sequence, kinds, user_features) -> np.ndarray:
        return np.asarray(self.model.user_vectors(sequence, kinds, user_features))


def ranker_metrics(ranker: ScoresCandidates, examples: Examples) -> dict[str, float]:
    scores = np.concatenate(
        [
            ranker.score(
                examples.sequence[part],
                examples.kinds[part],
                examples.item[part, None],
                examples.user_features[part],
                examples.hour[part],
            )[0][:, 0]
            for part in _batches(len(examples), 4096)
        ]
    )
    return {"auc": auc(examples.label, scores), "gauc": gauc(examples.user_ids, examples.label, scores)}


def _batches(total: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, total, size)]


class QueryInputs:
    """The queries' point-in-time states as model inputs of one vocabulary."""

    def __init__(self, queries: Sequence[Query], vocabulary: Vocabulary, length: int):
        rows = [query.row for query in queries]
        self.seen = [set(sequence_item_ids(row)) for row in rows]
        self.sequence, self.kinds = sequence_arrays(vocabulary, [behaviours(row) for row in rows], length)
        self.user_features = user_feature_matrix([row.features for row in rows])
        self.hour = hour_of_day(row.event.ts for row in rows)


def retrieve(model: RetrievesCandidates, inputs: QueryInputs, count: int) -> list[list[str]]:
    """The `count` nearest items of each query's user vector, items already in the sequence left out."""
    candidates = []
    for part in _batches(len(inputs.seen), QUERY_BATCH):
        vectors = model.user_vectors(inputs.sequence[part], inputs.kinds[part], inputs.user_features[part])
        _, ids = model.index.search(vectors, count + inputs.sequence.shape[1])
        for row, seen in zip(ids, inputs.seen[part], strict=True):
            candidates.append([item for item in row if item is not None and item not in seen][:count])
    return candidates


def rank(ranker: ScoresCandidates, inputs: QueryInputs, candidates: list[list[str]]) -> list[list[str]]:
    """Each query's candidates reordered by the ranker's score."""
    ranked = []
    width = max(len(row) for row in candidates)
    for part in _batches(len(candidates), RANK_BATCH):
        rows = candidates[part]
        padded = [row + [row[-1]] * (width - len(row)) for row in rows]
        indices = np.stack([ranker.vocabulary.item_indices(row) for row in padded])
        scores, _ = ranker.score(
            inputs.sequence[part], inputs.kinds[part], indices, inputs.user_features[part], inputs.hour[part]
        )
        for row, row_scores in zip(rows, scores, strict=True):
            order = np.argsort(-row_scores[: len(row)], kind="stable")
            ranked.append([row[n] for n in order])
    return ranked


def popularity_lists(popularity: Counter, inputs: QueryInputs, count: int) -> list[list[str]]:
    """Most popular training positives first, items already in the sequence left out."""
    head = [item for item, _ in popularity.most_common(count + inputs.sequence.shape[1])]
    return [[item for item in head if item not in seen][:count] for seen in inputs.seen]


def cooccurrence_lists(
    train_rows: list[Row],
    train_labels: np.ndarray,
    popularity: Counter,
    queries: Sequence[Query],
    inputs: QueryInputs,
    count: int,
) -> list[list[str]]:
    """SparrowRecSys-style item-to-item baseline: items that followed the user's recent items in other
    users' positive histories (within COOCCURRENCE_WINDOW), summed, popularity filling the rest."""
    follows: dict[str, Counter] = defaultdict(Counter)
    for row, label in zip(train_rows, train_labels, strict=True):
        if label > 0:
            for earlier in sequence_item_ids(row)[-COOCCURRENCE_WINDOW:]:
                follows[earlier][row.event.item_id] += 1
    fallback = popularity_lists(popularity, inputs, count)
    lists = []
    for query, seen, filler in zip(queries, inputs.seen, fallback, strict=True):
        scores: Counter = Counter()
        for earlier in sequence_item_ids(query.row)[-COOCCURRENCE_WINDOW:]:
            scores.update(follows.get(earlier, {}))
        chosen = [item for item, _ in scores.most_common() if item not in seen][:count]
        lists.append(chosen + list(islice((item for item in filler if item not in chosen), count - len(chosen))))
    return lists


def pipeline_metrics(lists: list[list[str]], queries: Sequence[Query]) -> dict[str, float]:
    relevant = [query.relevant - set(sequence_item_ids(query.row)) for query in queries]
    metrics: dict[str, float] = {}
    for k in CUTOFFS:
        metrics |= ranking_metrics(lists, relevant, k)
    return metrics


def evaluate_bundle(
    model: RetrievesCandidates,
    queries: Sequence[Query],
    length: int,
    candidates: int,
    extra_rankers: dict[str, ScoresCandidates] | None = None,
) -> dict[str, dict[str, float]]:
    """Pipeline metrics of retrieval alone and of retrieval followed by the bundle's ranker (and others)."""
    inputs = QueryInputs(queries, model.vocabulary, length)
    retrieved = retrieve(model, inputs, candidates)
    results = {
        "two-tower": pipeline_metrics(retrieved, queries),
        "two-tower + DIN": pipeline_metrics(rank(model, inputs, retrieved), queries),
    }
    for name, ranker in (extra_rankers or {}).items():
        results[f"two-tower + {name}"] = pipeline_metrics(rank(ranker, inputs, retrieved), queries)
    return results


def baseline_pipelines(
    train_rows: list[Row],
    train_labels: np.ndarray,
    popularity: Counter,
    queries: Sequence[Query],
    vocabulary: Vocabulary,
    length: int,
) -> dict[str, dict[str, float]]:
    inputs = QueryInputs(queries, vocabulary, length)
    count = max(CUTOFFS)
    builders: dict[str, Callable[[], list[list[str]]]] = {
        "popularity": lambda: popularity_lists(popularity, inputs, count),
        "item co-occurrence": lambda: cooccurrence_lists(train_rows, train_labels, popularity, queries, inputs, count),
    }
    return {name: pipeline_metrics(build(), queries) for name, build in builders.items()}


def ann_recall(index: ItemIndex, embeddings: np.ndarray, ids: list[str], queries: np.ndarray, k: int) -> float:
    """Share of the exact top-k (brute-force inner product) that the index returns."""
    exact = np.argsort(-(queries @ embeddings.T), axis=1)[:, :k]
    _, found = index.search(queries, k)
    id_array = np.array(ids, dtype=object)
    return float(np.mean([len(set(id_array[row]) & set(hits)) / k for row, hits in zip(exact, found, strict=True)]))
