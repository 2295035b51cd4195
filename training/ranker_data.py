"""The ranker's training rows, from the candidates retrieval actually gives.

For each training interaction with an item the user had not seen, the served pipeline's pool for
the user's point-in-time state (retrieval's nearest items and trending, seen items left out); a
row is kept when the real item is in it. Every epoch, each row's batch holds that item first and
NEGATIVES other items of its pool drawn afresh (never one of the user's next few: those are right
answers too). The pool and the retrieval scores come from a retrieval model that never saw this
user (`training.data.fold_of`), and the counts are those of the row's moment (`training.counts`):
in-sample and from the whole training data, both would know the row's answer, and the ranker
would learn to trust them more than it can when it serves.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from schemas.events import EventType
from schemas.runtime.model_inputs import PADDING, user_feature_matrix
from schemas.runtime.pipeline import ItemCounts, Recommender, pool_of, ranker_inputs, retrieve, scored_pools
from training.data import Query, Trending, request_of

NEGATIVES = 15
BATCH = 512


@dataclass
class RankerRows:
    """Row n: its moment (epoch ms) [N], the user's sequence (items, kinds, ages [N, L]), user features [N, F], its pool
    [N, P] item indices (the real item first, the user's next items left out, PADDING after the
    pool's end) with each item's standardised retrieval score and trending popularity [N, P], and
    its like labels liked, rated [N] (a rating at or above the threshold; the event has a rating)."""

    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.arrays.get("moments", ()))

    @classmethod
    def concatenate(cls, parts: Sequence["RankerRows"]) -> "RankerRows":
        width = max(part.arrays["pool"].shape[1] for part in parts)
        arrays = {}
        for name in parts[0].arrays:
            pieces = [part.arrays[name] for part in parts]
            if name in ("pool", "retrieval", "trending"):
                pieces = [np.pad(piece, ((0, 0), (0, width - piece.shape[1]))) for piece in pieces]
            arrays[name] = np.concatenate(pieces)
        return cls(arrays)

    def batches(self, counts: ItemCounts, batch_size: int, seed: int, attended: int) -> Callable[[int], Iterator[dict]]:
        """Each epoch's shuffled batches of whole size, their negatives drawn for that epoch, for a
        ranker that attends over the newest `attended` behaviours."""
        pool, arrays = self.arrays["pool"], self.arrays
        sizes = (pool != PADDING).sum(axis=1)

        def epoch(number: int) -> Iterator[dict]:
            rng = np.random.default_rng([seed, number])
            order = rng.permutation(len(self))
            for start in range(0, len(order) - batch_size + 1, batch_size):
                rows = order[start : start + batch_size]
                # NEGATIVES distinct positions from 1 to size - 1 per row: the smallest of random keys
                keys = rng.random((len(rows), pool.shape[1]))
                keys[:, 0] = np.inf
                keys[np.arange(pool.shape[1])[None, :] >= sizes[rows, None]] = np.inf
                columns = np.concatenate([np.zeros((len(rows), 1), np.int64),
                                          np.argsort(keys, axis=1)[:, :NEGATIVES]], axis=1)  # fmt: skip

                def take(name: str, rows=rows, columns=columns) -> np.ndarray:
                    return np.take_along_axis(arrays[name][rows], columns, axis=1)

                candidates = take("pool")
                features, pairs = ranker_inputs(arrays["moments"][rows], arrays["user_features"][rows],
                                                arrays["items"][rows], candidates, take("retrieval"),
                                                take("trending"), counts, attended)  # fmt: skip
                yield {"items": arrays["items"][rows], "kinds": arrays["kinds"][rows], "ages": arrays["ages"][rows],
                       "candidates": candidates, "features": features, "pairs": pairs,
                       "liked": arrays["liked"][rows], "rated": arrays["rated"][rows]}  # fmt: skip

        return epoch

    def steps(self, batch_size: int) -> int:
        return len(self) // batch_size


@dataclass(frozen=True)
class PoolShape:
    """How a training row's pool is drawn: `candidates` retrieved, `covisited` co-visitation
    candidates (the service's KF_COVISITATION_CANDIDATES), and which rating is a like."""

    candidates: int
    covisited: int
    label_threshold: float


def ranker_rows(
    queries: Sequence[Query],
    recommender_of: Callable[[Query], Recommender],
    trending: dict[tuple, Trending],
    shape: PoolShape,
) -> RankerRows:
    """Rows for the `queries` (one per interaction with an unseen item), each with its user's recommender."""
    groups: dict[int, tuple[Recommender, list[Query]]] = {}
    for query in queries:
        recommender = recommender_of(query)
        groups.setdefault(id(recommender), (recommender, []))[1].append(query)
    parts = [
        _rows(recommender, group[start : start + BATCH], trending, shape)
        for recommender, group in groups.values()
        for start in range(0, len(group), BATCH)
    ]
    kept = [part for part in parts if len(part)]
    return RankerRows.concatenate(kept) if kept else RankerRows({})


def _rows(recommender, queries, trending, shape: PoolShape) -> RankerRows:
    requests = [
        request_of(query, trending[query.row.order], 0, shape.candidates, covisited=shape.covisited)
        for query in queries
    ]
    sequences, vectors, retrieved = retrieve(recommender, requests)
    kept, pools = [], []
    for n, (query, request, items) in enumerate(zip(queries, requests, retrieved, strict=True)):
        pool, answer = pool_of(recommender, request, items), query.row.event.item_id
        others = [item for item in pool if item not in query.relevant]
        if answer in pool and len(others) >= NEGATIVES:
            kept.append(n)
            pools.append([answer, *others])
    if not kept:
        return RankerRows({})
    rows = np.array(kept)
    chosen = [requests[n] for n in kept]
    indices, retrieval, trending_scores = scored_pools(recommender, chosen, vectors[rows], pools)
    events = [queries[n].row.event for n in kept]
    rated = np.array([event.type is EventType.RATING for event in events], np.float32)
    liked = np.array([event.type is EventType.RATING and event.value >= shape.label_threshold for event in events],
                     np.float32)  # fmt: skip
    return RankerRows({
        "moments": np.array([request.now_ms for request in chosen], np.int64),
        "items": sequences.items[rows], "kinds": sequences.kinds[rows], "ages": sequences.ages[rows],
        "user_features": user_feature_matrix([request.user_features for request in chosen]),
        "pool": indices, "retrieval": retrieval, "trending": trending_scores, "liked": liked, "rated": rated,
    })  # fmt: skip
