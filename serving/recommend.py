"""Model work of recommendation requests: live sequence -> user vector -> Faiss top-M (+ trending)
-> DIN scores -> top-k.

Runs in the service's thread pool, never on the event loop. `rank_batch` ranks several users'
requests with one user-tower call, one Faiss search and one DIN call: the service batches
concurrent requests, so the fixed cost of a model call is shared.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from schemas.bundle import LoadedBundle
from schemas.features import UserFeatures
from schemas.model_inputs import PADDING, Behaviour, hour_of_day, sequence_arrays, user_feature_matrix

REASONS = 3


@dataclass(frozen=True)
class RankRequest:
    """One user's request: the top `k` of the user's `candidates` Faiss neighbours merged with
    `trending`, `exclude` left out, by DIN score; with `explain`, each with the behaviours DIN
    attended to most."""

    behaviours: list[Behaviour]
    user_features: UserFeatures | None
    now_ms: int
    trending: list[str]
    exclude: set[str]
    k: int
    candidates: int
    explain: bool = True


@dataclass(frozen=True)
class Scored:
    item_id: str
    score: float
    reasons: tuple[str, ...] = ()
    """Sequence items with the highest DIN attention for this item, highest first."""


@dataclass
class Ranked:
    items: list[Scored]
    candidates: int
    timings_s: dict[str, float] = field(default_factory=dict)
    """Seconds per stage of the model call that ranked this request (with its batch)."""


def rank_batch(bundle: LoadedBundle, requests: list[RankRequest]) -> list[Ranked]:
    """One Ranked per request, in order; a request ranks the same alone or in a batch."""
    length = bundle.manifest.feature_spec.sequence_length
    sequence, kinds = sequence_arrays(bundle.vocabulary, [request.behaviours for request in requests], length)
    user = user_feature_matrix([request.user_features for request in requests])
    clock = time.perf_counter()
    deepest = max(request.candidates + len(request.exclude) for request in requests)
    _, neighbours = bundle.index.search(bundle.user_vectors(sequence, kinds, user), deepest)
    pools = [_pool(request, row) for request, row in zip(requests, neighbours, strict=True)]
    timings = {"retrieval": time.perf_counter() - clock}
    widest = max(map(len, pools))
    if not widest:
        return [Ranked([], 0, timings) for _ in requests]
    clock = time.perf_counter()
    indices = np.full((len(pools), widest), PADDING, np.int32)  # short pools padded; their scores are cut off
    for row, pool in enumerate(pools):
        indices[row, : len(pool)] = bundle.vocabulary.item_indices(pool)
    scores, attention = bundle.score(sequence, kinds, indices, user, hour_of_day(r.now_ms for r in requests))
    timings["ranking"] = time.perf_counter() - clock
    return [
        _top(request, pool, scores[row, : len(pool)], attention[row], length, timings)
        for row, (request, pool) in enumerate(zip(requests, pools, strict=True))
    ]


def _pool(request: RankRequest, neighbours: np.ndarray) -> list[str]:
    retrieved = [item for item in neighbours if item is not None and item not in request.exclude]
    trending = [item for item in request.trending if item not in request.exclude]
    return list(dict.fromkeys(retrieved[: request.candidates] + trending))


def _top(
    request: RankRequest, pool: list[str], scores: np.ndarray, attention: np.ndarray, length: int, timings: dict
) -> Ranked:
    """scores [M] and attention [M, L] of this request's pool -> its top k."""
    newest = request.behaviours[-length:]
    first = length - len(newest)  # sequence position of newest[0] (left padding before it)
    items = [
        Scored(pool[n], float(scores[n]), _reasons(attention[n], newest, first) if request.explain else ())
        for n in np.argsort(-scores, kind="stable")[: request.k]
    ]
    return Ranked(items, len(pool), timings)


def _reasons(weights: np.ndarray, newest: list[Behaviour], first: int) -> tuple[str, ...]:
    positions = [p for p in np.argsort(-weights, kind="stable") if p >= first and weights[p] > 0][:REASONS]
    return tuple(dict.fromkeys(newest[p - first][0] for p in positions))
