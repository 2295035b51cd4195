"""Holdout evaluation over the full catalogue: the served pipeline exactly as the service runs it
(`schemas.runtime.pipeline.rank_batch`: the same pool, trending merged in, the seen set left out), retrieval
alone, and the baselines popularity, item co-occurrence (plain and weighted), EASE and the
service's fallback, all on the same queries; with
Recall, NDCG and HitRate at K, the rankers' AUC within their pools, how much the newest behaviour
matters, how often two recommendations carry the same reasons, and on the synthetic world the true
click probability of what is recommended."""

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from schemas.runtime.ann import ItemIndex
from schemas.runtime.covisitation import CoVisitation
from schemas.runtime.model_inputs import FIRST_ITEM, Vocabulary
from schemas.runtime.pipeline import Ranked, RankRequest, Recommender, fallback_items, rank_batch, retrieve
from schemas.runtime.sources.synthetic import SyntheticWorld
from training.counts import COVISITATION_WINDOW, item_sequences
from training.data import Query, Row, Trending, request_of
from training.metrics import bootstrap_interval, gauc, paired_difference, per_query_metrics, ranking_metrics

FUTURE_ITEMS = 5
"""A query's relevant items: the next 5 items the user takes (as the leave-last-5 split's)."""
CUTOFFS = (10, 50)
REQUEST_BATCH = 64
COOCCURRENCE_RECENT = 5
"""The plain item co-occurrence baseline sums what followed the user's newest 5 items."""
COOCCURRENCE_TUNED_RECENT = 20
COOCCURRENCE_DECAYS = (1.0, 0.8, 0.6, 0.4)
"""The tuned co-occurrence baseline weighs each of the newest 20 items this much of the next newer one."""
COOCCURRENCE_POWERS = (0.0, 0.25, 0.5)
"""... and divides each candidate's sum by its popularity to one of these powers."""
EASE_ITEMS = 5000
"""EASE's closed form inverts an items x items matrix: it takes the most interacted items only."""
EASE_REGULARISATION = (25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0)
"""EASE's lambda: the best of these on the validation queries."""
EVERYTHING = 10**9
EXPLAINED = 10
CANDIDATE_GRID = (50, 100, 150, 200)
"""Faiss candidates (M) the candidate curve measures the served pipeline with."""
TRENDING_GRID = (0, 25, 50)
LIKE_WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)
"""The like weights the full report measures the served pipeline with (KF_LIKE_WEIGHT: 0.5)."""
"""Trending candidates the candidate curve measures the served pipeline with, at each M."""


@dataclass(frozen=True)
class Moments:
    """The queries of one part of a split with what the service would know then: the trending list."""

    queries: list[Query]
    trending: dict[tuple, Trending]
    covisited: int = 0
    """Co-visitation candidates per request (KF_COVISITATION_CANDIDATES)."""

    def requests(self, k: int, candidates: int, drop_newest: bool = False, explain: int = 0):
        requests = [
            request_of(query, self.trending[query.row.order], k, candidates, explain, self.covisited)
            for query in self.queries
        ]
        if drop_newest:
            requests = [replace(request, behaviours=request.behaviours[:-1]) for request in requests]
        return requests


def served(recommender: Recommender, moments: Moments, candidates: int, drop_newest: bool = False) -> list[Ranked]:
    """The service's answer at each query (exclude_seen, the top 10 explained): every pool item, best first."""
    return ranked_in_batches(recommender, moments.requests(EVERYTHING, candidates, drop_newest, EXPLAINED))


def ranked_in_batches(recommender: Recommender, requests: list[RankRequest]) -> list[Ranked]:
    """`rank_batch` over `requests`, REQUEST_BATCH at a time: one Ranked per request, in order."""
    return [
        ranked
        for start in range(0, len(requests), REQUEST_BATCH)
        for ranked in rank_batch(recommender, requests[start : start + REQUEST_BATCH])
    ]


def candidate_curve(
    recommender: Recommender, moments: Moments, candidates: int, trending: int, configured: list[Ranked]
) -> list[dict]:
    """The served pipeline with M Faiss and T trending candidates, for each (M, T) of the grids: its
    NDCG@10 and HitRate@10, the difference from `configured` (the answers with `candidates` and
    `trending`, the length of the moments' trending lists) on the same queries with the paired
    standard error, and how many items DIN ranked per query (what a request's ranking CPU grows with)."""
    relevant = [query.relevant for query in moments.queries]
    answers: dict[tuple[int, int], list[Ranked]] = {(candidates, trending): configured}

    def answer(m: int, t: int) -> list[Ranked]:
        if (m, t) not in answers:
            shorter = {order: listed[:t] for order, listed in moments.trending.items()}
            answers[m, t] = served(recommender, Moments(moments.queries, shorter, moments.covisited), m)
        return answers[m, t]

    reference = item_lists(configured)
    points = []
    for m in CANDIDATE_GRID:
        for t in TRENDING_GRID:
            ranked = answer(m, t)
            lists = item_lists(ranked)
            points.append({
                "candidates": m,
                "trending": t,
                "ranked_per_query": float(np.mean([len(each.items) for each in ranked])),
                **ranking_metrics(lists, relevant, 10),
                "difference": paired_difference(lists, reference, relevant, 10),
            })  # fmt: skip
    return points


def like_weight_curve(
    reweighted: Callable[[float], Recommender], moments: Moments, candidates: int, configured: list[Ranked],
    configured_weight: float,
) -> list[dict]:  # fmt: skip
    """The served pipeline with each like weight of LIKE_WEIGHT_GRID (`reweighted(w)`: the same
    models, the served score next + w · log P(like)): its NDCG@10 and HitRate@10 and the difference
    from `configured` (the answers at `configured_weight`) on the same queries, with the paired
    standard error."""
    relevant, reference = [query.relevant for query in moments.queries], item_lists(configured)
    points = []
    for weight in LIKE_WEIGHT_GRID:
        ranked = configured if weight == configured_weight else served(reweighted(weight), moments, candidates)
        lists = item_lists(ranked)
        points.append({
            "like_weight": weight,
            **ranking_metrics(lists, relevant, 10),
            "difference": paired_difference(lists, reference, relevant, 10),
        })  # fmt: skip
    return points


def retrieved(recommender: Recommender, moments: Moments, count: int) -> list[list[str]]:
    """Retrieval alone: the `count` nearest items of each query's user vector, seen items left out."""
    requests = moments.requests(count, count)
    return [
        items
        for start in range(0, len(requests), REQUEST_BATCH)
        for items in retrieve(recommender, requests[start : start + REQUEST_BATCH])[2]
    ]


def item_lists(ranked: Sequence[Ranked]) -> list[list[str]]:
    return [[item.item_id for item in answer.items] for answer in ranked]


def pipeline_metrics(lists: Sequence[Sequence[str]], queries: Sequence[Query]) -> dict[str, float]:
    relevant = [query.relevant for query in queries]
    metrics: dict[str, float] = {}
    for k in CUTOFFS:
        metrics |= ranking_metrics(lists, relevant, k)
    return metrics


UNCERTAIN_METRICS = ("ndcg@10", "hitrate@10")


def intervals(
    lists: dict[str, Sequence[Sequence[str]]], queries: Sequence[Query], served: str
) -> dict[str, dict[str, list[float]]]:
    """For each pipeline, the 95 % bootstrap interval over users of NDCG@10 and HR@10, and of the
    served pipeline's paired difference from it (`minus_<metric>`: served minus it, query by
    query), each user drawn with all of their queries."""
    kept = [n for n, query in enumerate(queries) if query.relevant]
    users = [queries[n].row.event.user_id for n in kept]
    relevant = [queries[n].relevant for n in kept]
    per_query = {name: per_query_metrics([items[n] for n in kept], relevant, 10) for name, items in lists.items()}
    report = {}
    for name, metrics in per_query.items():
        report[name] = {metric: list(bootstrap_interval(metrics[metric], users)) for metric in UNCERTAIN_METRICS}
        if name != served:
            report[name] |= {
                f"minus_{metric}": list(
                    bootstrap_interval(np.subtract(per_query[served][metric], metrics[metric]), users)
                )
                for metric in UNCERTAIN_METRICS
            }
    return report


def pool_auc(ranked: Sequence[Ranked], queries: Sequence[Query]) -> float:
    """The ranker's own measure: within each query's pool, the chance that a relevant item is
    ranked above an irrelevant one, averaged over queries weighted by their pool size (GAUC)."""
    groups, labels, scores = [], [], []
    for n, (answer, query) in enumerate(zip(ranked, queries, strict=True)):
        groups += [n] * len(answer.items)
        labels += [item.item_id in query.relevant for item in answer.items]
        scores += [-place for place in range(len(answer.items))]
    return gauc(groups, np.array(labels, np.float32), np.array(scores, np.float64))


def identical_reasons_share(ranked: Sequence[Ranked], k: int = 10) -> float:
    """Share of top-k recommendations whose reasons are exactly those of another one in the same answer."""
    shared = total = 0
    for answer in ranked:
        reasons = [item.reasons for item in answer.items[:k]]
        shared += sum(reasons.count(reason) > 1 for reason in reasons)
        total += len(reasons)
    return shared / total if total else math.nan


def _popular(popularity: np.ndarray, vocabulary: Vocabulary, queries: Sequence[Query], count: int) -> list[str]:
    """The most interacted items of the training data, most first: enough for `count` unseen at every query."""
    return _ordered(popularity[FIRST_ITEM:], vocabulary, count + max((len(q.seen) for q in queries), default=0))


def popularity_lists(popularity: np.ndarray, vocabulary: Vocabulary, queries: Sequence[Query], count: int):
    """Most interacted items of the training data first, seen items left out."""
    head = _popular(popularity, vocabulary, queries, count)
    return [[item for item in head if item not in query.seen][:count] for query in queries]


def fallback_lists(popularity: np.ndarray, vocabulary: Vocabulary, moments: Moments, count: int) -> list[list[str]]:
    """The service's answer without its models at each query: the trending list of that moment,
    then the most interacted items of the training data, seen items left out."""
    queries = moments.queries
    popular = _popular(popularity, vocabulary, queries, count)
    return [
        fallback_items([item for item, _ in moments.trending[query.row.order]], popular, query.seen, count)
        for query in queries
    ]


class CoOccurrence:
    """Item co-occurrence: the items that followed the user's newest items within COVISITATION_WINDOW
    interactions in the training histories. Plain (the defaults): the newest COOCCURRENCE_RECENT
    items' counts, summed. `weighted`: the newest `recent` items, each `decay` times as strong as
    the next newer one, and each candidate's sum divided by (its popularity + 1) ** `power`.
    Popularity breaks ties and fills the rest."""

    def __init__(self, train: Sequence[Row], vocabulary: Vocabulary, popularity: np.ndarray):
        self.vocabulary, self.popularity = vocabulary, popularity.astype(np.float64)
        sequences = item_sequences(train, vocabulary).values()
        self.table = CoVisitation.of(sequences, vocabulary.size, COVISITATION_WINDOW, None)
        # Far below 1, the least difference of two plain sums, so there it only orders ties (and the
        # items nothing followed); weighted sums this close are as good as tied.
        self.tie_break = self.popularity / (self.popularity.max() + 1.0) * 1e-6
        self.recent, self.decay, self.power = COOCCURRENCE_RECENT, 1.0, 0.0

    def weighted(self, recent: int, decay: float, power: float) -> "CoOccurrence":
        self.recent, self.decay, self.power = recent, decay, power
        return self

    def tune(self, score: Callable[["CoOccurrence"], float]) -> "CoOccurrence":
        """Weighted with the decay and power (over the newest COOCCURRENCE_TUNED_RECENT items) that
        `score` rates highest."""
        grid = itertools.product([COOCCURRENCE_TUNED_RECENT], COOCCURRENCE_DECAYS, COOCCURRENCE_POWERS)
        return self.weighted(*max(grid, key=lambda weighting: score(self.weighted(*weighting))))

    def lists(self, queries: Sequence[Query], count: int) -> list[list[str]]:
        lists = []
        for query in queries:
            newest = self.vocabulary.item_indices([entry.item_id for entry in query.row.sequence[-self.recent :]])
            weights = self.decay ** np.arange(len(newest))[::-1]  # the newest last, weight 1
            scores = self.table.following(newest, weights) / (self.popularity + 1.0) ** self.power
            lists.append(_best(scores + self.tie_break, self.vocabulary, query.seen, count))
        return lists


class Ease:
    """EASE (Steck, 2019): an item-item weight matrix in closed form, B = I - P / diag(P) with
    P = (XᵀX + λI)⁻¹ over users' interaction vectors X, zero diagonal; a user scores items by x·B.
    Over the EASE_ITEMS most popular items; `fit` or `tune` chooses λ."""

    def __init__(self, train: Sequence[Row], vocabulary: Vocabulary, popularity: np.ndarray):
        self.vocabulary = vocabulary
        self.items = np.argsort(-popularity, kind="stable")[: min(EASE_ITEMS, int((popularity > 0).sum()))]
        """[I] the vocabulary rows of the weights' rows and columns, most popular first."""
        column = np.full(vocabulary.size, -1, np.int64)
        column[self.items] = np.arange(len(self.items))
        self.column = column
        sequences = list(item_sequences(train, vocabulary).values())
        users = np.zeros((len(sequences), len(self.items)), np.float32)
        for row, items in enumerate(sequences):
            users[row, column[items][column[items] >= 0]] = 1.0
        self.gram = users.T @ users
        """[I, I] XᵀX"""
        self.regularisation = math.nan
        self.weights = np.zeros_like(self.gram)
        self.scores: dict[float, float] = {}

    def fit(self, regularisation: float) -> "Ease":
        self.regularisation = regularisation
        inverse = np.linalg.inv(self.gram + regularisation * np.eye(len(self.gram), dtype=self.gram.dtype))
        self.weights = -inverse / np.diag(inverse)[None, :]
        self.weights[np.diag_indices_from(self.weights)] = 0.0
        return self

    def tune(self, regularisations: Sequence[float], score: Callable[["Ease"], float]) -> "Ease":
        """Fitted with the λ whose model `score` rates highest; `scores` keeps each λ's score."""
        self.scores = {regularisation: score(self.fit(regularisation)) for regularisation in regularisations}
        return self.fit(max(self.scores, key=self.scores.__getitem__))

    def lists(self, queries: Sequence[Query], count: int) -> list[list[str]]:
        histories = np.zeros((len(queries), len(self.items)), np.float32)
        for row, query in enumerate(queries):
            seen = self.column[self.vocabulary.item_indices(query.seen)]
            histories[row, seen[seen >= 0]] = 1.0
        lists, scores = [], np.full(self.vocabulary.size, -np.inf, np.float32)
        for query, item_scores in zip(queries, histories @ self.weights, strict=True):  # one product for all
            scores[self.items] = item_scores
            lists.append(_best(scores, self.vocabulary, query.seen, count))
        return lists


def _ordered(scores: np.ndarray, vocabulary: Vocabulary, count: int) -> list[str]:
    """The `count` best item ids of scores over vocabulary rows (row i: item_ids[i])."""
    count = min(count, len(scores))
    best = np.argpartition(-scores, count - 1)[:count] if count < len(scores) else np.arange(len(scores))
    return [vocabulary.item_ids[n] for n in best[np.argsort(-scores[best], kind="stable")]]


def _best(scores: np.ndarray, vocabulary: Vocabulary, seen: frozenset[str], count: int) -> list[str]:
    """The `count` best unseen items of scores over item indices."""
    scores = np.array(scores, dtype=np.float64)  # a copy; float64 keeps the co-occurrence tie-break
    scores[vocabulary.item_indices(seen)] = -np.inf
    return [item for item in _ordered(scores[FIRST_ITEM:], vocabulary, count + len(seen)) if item not in seen][:count]


def click_probability_share(
    world: SyntheticWorld, queries: Sequence[Query], lists: Sequence[Sequence[str]], k: int = 10
) -> float:
    """On the synthetic world: the true probability that the user clicks each of the top k as shown
    (position by position, with the user's interests at the query's moment), summed, as a share of
    that sum for the best possible top k of unseen items; averaged over queries."""
    shares = []
    for query, items in zip(queries, lists, strict=True):
        user, at = world.user_index(query.user_id), query.row.event.ts
        unseen = np.array([n for n in range(world.spec.items) if world.item_id_of(n) not in query.seen])
        chosen = np.array([world.item_index(item) for item in items[:k]])
        positions = np.arange(k)
        best = unseen[np.argsort(-world.affinity(user, unseen, at), kind="stable")[:k]]
        ideal = world.click_probability(user, best, positions[: len(best)], at).sum()
        got = world.click_probability(user, chosen, positions[: len(chosen)], at).sum() if len(chosen) else 0.0
        shares.append(got / ideal)
    return float(np.mean(shares)) if shares else math.nan


def ann_recall(index: ItemIndex, embeddings: np.ndarray, ids: list[str], queries: np.ndarray, k: int) -> float:
    """Share of the exact top-k (brute-force inner product) that the index returns."""
    exact = np.argsort(-(queries @ embeddings.T), axis=1)[:, :k]
    _, found = index.search(queries, k)
    id_array = np.array(ids, dtype=object)
    return float(np.mean([len(set(id_array[row]) & set(hits)) / k for row, hits in zip(exact, found, strict=True)]))
