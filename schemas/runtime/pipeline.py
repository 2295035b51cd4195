"""The served pipeline, written once: the service runs it on every request and training evaluates
exactly it. Live sequence -> user vector -> Faiss top-M (seen items left out) + the best new items
(published since training) + the items that most often followed the newest behaviours
(co-visitation) + trending -> ranker features -> DIN scores -> top-k, with the behaviours DIN
attended to most as reasons.

`rank_batch` ranks several requests with one user-tower call, one Faiss search and one ranker
call: the service batches concurrent requests, and training evaluates thousands at a time.
A `Recommender` is what it runs on: a loaded bundle in the service, models in memory in training.
"""

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol

import numpy as np

from schemas.features import SequenceEntry, UserFeatures
from schemas.runtime.ann import ItemIndex
from schemas.runtime.covisitation import CoVisitation
from schemas.runtime.model_inputs import (
    COVISITATION_SPANS,
    FIRST_ITEM,
    PADDING,
    ScoreScale,
    SequenceArrays,
    Vocabulary,
    pair_inputs,
    ranker_features,
    sequence_arrays,
    user_feature_matrix,
)
from schemas.runtime.top_k import top_k

REASONS = 3
COVISITED_RECENT, COVISITED_DECAY, COVISITED_POWER = 20, 0.8, 0.25
"""Co-visitation candidates weigh the newest 20 behaviours, each 0.8 times as strong as the next newer
one, and divide each item's sum by (its popularity + 1) ** 0.25: the weighting validation chose for
the recency-weighted co-occurrence baseline on both MovieLens splits (README, Training)."""


@dataclass(frozen=True)
class RankRequest:
    """One user's request: the top `k` of the user's `candidates` Faiss neighbours merged with its
    `new_items` nearest items newer than the models, its `covisited` items that most often followed
    its newest behaviours, and `trending` (item, popularity), `exclude` left out, by ranker score;
    the first `explain` of them with the behaviours the ranker attended to most."""

    user_id: str
    behaviours: Sequence[SequenceEntry]
    """The live sequence, oldest first."""
    user_features: UserFeatures | None
    now_ms: int
    trending: Sequence[tuple[str, float]]
    exclude: set[str]
    k: int
    candidates: int
    explain: int = 0
    new_items: int = 0
    covisited: int = 0


@dataclass(frozen=True)
class Scored:
    item_id: str
    score: float
    reasons: tuple[str, ...] = ()
    """Sequence items with the highest attention for this item, highest first."""


@dataclass
class Ranked:
    items: list[Scored]
    candidates: int
    timings_s: dict[str, float] = field(default_factory=dict)
    """Seconds per stage of the model call that ranked this request (with its batch)."""


class Recommender(Protocol):
    """The models and tables the pipeline runs on (`schemas.runtime.loaded_bundle.LoadedBundle` in the service)."""

    vocabulary: Vocabulary
    sequence_length: int
    ranker_behaviours: int
    """N: the ranker attends over the newest N behaviours of the sequence (N <= sequence_length)."""
    index: ItemIndex
    added_index: ItemIndex | None
    """The items added since training (`schemas.runtime.loaded_bundle.LoadedBundle.with_items`); None: none."""
    embeddings: np.ndarray
    """[items, d]: row i is the retrieval vector of vocabulary.item_ids[i]."""
    score_scale: ScoreScale
    covisitation: CoVisitation
    popularity: np.ndarray
    """[vocabulary.size] float32 interactions per item index in the training data."""
    covisitation_damping: np.ndarray
    """[covisitation.size] float32: `covisitation_damping` of `popularity`, computed once per bundle."""

    def user_vectors(self, sequences: SequenceArrays) -> np.ndarray:
        """-> [B, d]."""
        ...

    def score(self, sequences: SequenceArrays, candidates, features, pairs) -> tuple[np.ndarray, np.ndarray]:
        """candidates [B, M], features [B, M, F], pairs [B, M, N] -> (scores [B, M], attention [B, M, N])."""
        ...


@dataclass
class Candidates:
    """What the ranker reads for a batch of requests: each request's pool of item ids, and the
    inputs of one ranker call (short pools padded with PADDING)."""

    sequences: SequenceArrays
    pools: list[list[str]]
    indices: np.ndarray
    """[B, M] int32 item indices of the pools."""
    features: np.ndarray
    """[B, M, len(RANKER_FEATURES)] float32."""
    pairs: np.ndarray
    """[B, M, N] float32: the ranker's newest N behaviours."""


def fallback_items(trending: Sequence[str], popular: Sequence[str], seen: Collection[str], k: int) -> list[str]:
    """The answer without the models: trending first, then the most popular, each item once, seen
    items left out."""
    ranked = dict.fromkeys([*trending, *popular])
    return list(islice((item for item in ranked if item not in seen), k))


def retrieve(recommender: Recommender, requests: Sequence[RankRequest]) -> tuple[SequenceArrays, np.ndarray, list]:
    """-> (the requests' sequences, user vectors [B, d], each request's retrieved items: its
    `candidates` nearest items, excluded items left out, nearest first, then its `new_items`
    nearest new items)."""
    sequences = sequence_arrays(
        recommender.vocabulary,
        [request.behaviours for request in requests],
        [request.now_ms for request in requests],
        recommender.sequence_length,
    )
    vectors = recommender.user_vectors(sequences)
    deepest = min(max(request.candidates for request in requests), len(recommender.index))
    _, neighbours = recommender.index.search(vectors, deepest, [request.exclude for request in requests])
    retrieved = [
        [item for item in row if item is not None][: request.candidates]
        for request, row in zip(requests, neighbours, strict=True)
    ]
    return sequences, vectors, _with_new_items(recommender.added_index, requests, vectors, retrieved)


def _with_new_items(added: ItemIndex | None, requests: Sequence[RankRequest], vectors, retrieved: list) -> list:
    """Each request's retrieved items, then its `new_items` nearest of the items added since training
    not among them: new items have no interactions to lift them among the others, and this is how
    they reach the ranker before the next retraining."""
    deepest = max(request.new_items for request in requests)
    if added is None or not deepest:
        return retrieved
    _, nearest = added.search(vectors, min(deepest, len(added)), [request.exclude for request in requests])
    return [
        list(dict.fromkeys(items + [item for item in row[: request.new_items] if item is not None]))
        for request, items, row in zip(requests, retrieved, nearest, strict=True)
    ]


def pool_of(recommender: Recommender, request: RankRequest, retrieved: list[str]) -> list[str]:
    """The retrieved items, then the co-visited ones, then the trending ones, excluded items left
    out, each once."""
    trending = [item for item, _ in request.trending if item not in request.exclude]
    return list(dict.fromkeys(retrieved + covisited(recommender, request) + trending))


def covisitation_damping(popularity: np.ndarray, size: int) -> np.ndarray:
    """[size] float32: what divides each item's co-visitation score in `covisited`, (its popularity +
    1) ** COVISITED_POWER; a power over the catalogue costs more than the rest of `covisited`."""
    return (popularity[:size] + np.float32(1)) ** np.float32(COVISITED_POWER)


def covisited(recommender: Recommender, request: RankRequest) -> list[str]:
    """The request's `covisited` items that most often followed its newest behaviours in the
    training data (COVISITED_RECENT, _DECAY and _POWER), excluded items left out, strongest first."""
    if not request.covisited:
        return []
    table = recommender.covisitation
    newest = recommender.vocabulary.item_indices([entry.item_id for entry in request.behaviours[-COVISITED_RECENT:]])
    weights = np.float32(COVISITED_DECAY) ** np.arange(len(newest), dtype=np.float32)[::-1]  # the newest: 1
    counted = (newest >= FIRST_ITEM) & (newest < table.size)  # items added since training followed nothing
    scores = table.following(newest[counted], weights[counted])
    scores /= recommender.covisitation_damping
    # The strongest few first (a partial sort); all of them only when exclusions leave too few.
    for depth in (3 * request.covisited + 1, len(scores)):
        strongest = top_k(scores, depth)  # ties: the smaller index
        ranked = (recommender.vocabulary.item_id(index) for index in strongest if scores[index] > 0)
        found = list(islice((item for item in ranked if item not in request.exclude), request.covisited))
        if len(found) == request.covisited or scores[strongest[-1]] <= 0:
            return found
    return found


class ItemCounts(Protocol):
    """The counts of the training data that the ranker's features read."""

    def pair_counts(self, users: Sequence[str], behaviours, candidates) -> np.ndarray:
        """users [B], behaviours [B, L], candidates [B, M] item indices -> [B, M, L] co-visitation counts."""
        ...

    def interactions(self, users: Sequence[str], candidates) -> np.ndarray:
        """users [B], candidates [B, M] item indices -> [B, M] interaction counts."""
        ...


@dataclass(frozen=True)
class BundleCounts:
    """The counts as a bundle holds them: the same for every user (the service's)."""

    covisitation: CoVisitation
    popularity: np.ndarray

    def pair_counts(self, users, behaviours, candidates) -> np.ndarray:
        return self.covisitation.pair_counts(behaviours, candidates)

    def interactions(self, users, candidates) -> np.ndarray:
        return self.popularity[candidates]


def scored_pools(
    recommender: Recommender, requests: Sequence[RankRequest], vectors: np.ndarray, pools: list[list[str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pools as item indices [B, M] int32 (short ones padded with PADDING), with each item's
    retrieval score for its user, standardised ([B, M] float32), and its trending popularity
    ([B, M] float32, 0 when not trending)."""
    width = max(1, max(map(len, pools)))
    indices = np.full((len(pools), width), PADDING, np.int32)
    trending = np.zeros((len(pools), width), np.float32)
    for row, (request, pool) in enumerate(zip(requests, pools, strict=True)):
        indices[row, : len(pool)] = recommender.vocabulary.item_indices(pool)
        popular = dict(request.trending)
        trending[row, : len(pool)] = [popular.get(item, 0.0) for item in pool]
    embedded = recommender.embeddings[np.maximum(indices - FIRST_ITEM, 0)]
    embedded[indices < FIRST_ITEM] = 0.0  # padding, and trending items newer than the models: no retrieval score
    scores = np.einsum("bd,bmd->bm", vectors, embedded)
    return indices, recommender.score_scale.standardised(scores, vectors), trending


def ranker_inputs(
    moments: np.ndarray,
    user_features: np.ndarray,
    behaviours: np.ndarray,
    indices: np.ndarray,
    retrieval: np.ndarray,
    trending: np.ndarray,
    counts: ItemCounts,
    attended: int,
) -> tuple[np.ndarray, np.ndarray]:
    """-> (features [B, M, len(RANKER_FEATURES)], pairs [B, M, N]) of candidates `indices` [B, M]
    at `moments` [B] (epoch ms) for users with `user_features` [B, F] and sequences `behaviours` [B, L],
    for a ranker that attends over the newest N = min(attended, L) behaviours. Only the behaviours
    the ranker or its features read are counted."""
    newest = behaviours[:, -max(attended, *COVISITATION_SPANS) :]
    pairs = counts.pair_counts(moments, newest, indices)
    features = ranker_features(retrieval, pairs, counts.interactions(moments, indices), trending, user_features)
    return features, pair_inputs(pairs[:, :, -attended:])


def candidates_of(
    recommender: Recommender,
    requests: Sequence[RankRequest],
    sequences: SequenceArrays,
    vectors: np.ndarray,
    pools: list[list[str]],
) -> Candidates:
    """The ranker's inputs for `pools`, with the counts the recommender holds."""
    indices, retrieval, trending = scored_pools(recommender, requests, vectors, pools)
    features, pairs = ranker_inputs(
        np.array([request.now_ms for request in requests], np.int64),
        user_feature_matrix([request.user_features for request in requests]),
        sequences.items,
        indices,
        retrieval,
        trending,
        BundleCounts(recommender.covisitation, recommender.popularity),
        recommender.ranker_behaviours,
    )
    return Candidates(sequences, pools, indices, features, pairs)


def rank_batch(recommender: Recommender, requests: list[RankRequest]) -> list[Ranked]:
    """One Ranked per request, in order; a request ranks the same alone or in a batch."""
    clock = time.perf_counter()
    sequences, vectors, retrieved = retrieve(recommender, requests)
    pools = [pool_of(recommender, request, items) for request, items in zip(requests, retrieved, strict=True)]
    timings = {"retrieval": time.perf_counter() - clock}
    if not max(map(len, pools)):
        return [Ranked([], 0, timings) for _ in requests]
    clock = time.perf_counter()
    batch = candidates_of(recommender, requests, sequences, vectors, pools)
    scores, attention = recommender.score(sequences, batch.indices, batch.features, batch.pairs)
    timings["ranking"] = time.perf_counter() - clock
    length = recommender.ranker_behaviours
    return [
        _top(request, pool, scores[row, : len(pool)], attention[row, : len(pool)], length, timings)
        for row, (request, pool) in enumerate(zip(requests, pools, strict=True))
    ]


def _top(
    request: RankRequest, pool: list[str], scores: np.ndarray, attention: np.ndarray, length: int, timings: dict
) -> Ranked:
    """scores [M] and attention [M, N] over the newest N behaviours of this request's pool -> its top k.

    An item's reasons are the behaviours its attention lifts most above what the same behaviour gets
    from the pool on average: DIN weighs a recent behaviour highly for every candidate, and the
    reasons should say why this item, not why anything."""
    newest = request.behaviours[-length:]
    first = length - len(newest)  # sequence position of newest[0] (left padding before it)
    lift = attention - attention.mean(axis=0) if request.explain else attention
    items = [
        Scored(pool[n], float(scores[n]), _reasons(lift[n], newest, first) if place < request.explain else ())
        for place, n in enumerate(np.argsort(-scores, kind="stable")[: request.k])
    ]
    return Ranked(items, len(pool), timings)


def _reasons(lift: np.ndarray, newest: Sequence[SequenceEntry], first: int) -> tuple[str, ...]:
    """The real behaviours (not padding) by lift, the newer first on ties, at most REASONS. DIN's
    weights are unnormalised and mostly negative, so the sign of a weight says nothing on its own."""
    positions = sorted(range(first, len(lift)), key=lambda p: (-lift[p], -p))[:REASONS]
    return tuple(dict.fromkeys(newest[p - first].item_id for p in positions))
