"""Evaluation metrics, computed exactly (no sampled metrics)."""

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outranks a random negative (ties count
    half). NaN when only one class is present."""
    labels = np.asarray(labels) > 0
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks, tied scores sharing their mean rank."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def gauc(users: Sequence[str], labels: np.ndarray, scores: np.ndarray) -> float:
    """Group AUC of the DIN paper: each user's AUC weighted by that user's number of samples, over
    users with both positives and negatives (the others have no AUC)."""
    rows: dict[str, list[int]] = defaultdict(list)
    for n, user in enumerate(users):
        rows[user].append(n)
    weighted, total = 0.0, 0
    for indices in rows.values():
        value = auc(labels[indices], scores[indices])
        if not math.isnan(value):
            weighted += len(indices) * value
            total += len(indices)
    return weighted / total if total else math.nan


def per_query_metrics(
    ranked: Sequence[Sequence[str]], relevant: Sequence[frozenset[str]], k: int
) -> dict[str, list[float]]:
    """Recall@k, NDCG@k (binary relevance) and HitRate@k of each query with something relevant."""
    per_query: dict[str, list[float]] = {f"recall@{k}": [], f"ndcg@{k}": [], f"hitrate@{k}": []}
    for items, truth in zip(ranked, relevant, strict=True):
        if not truth:
            continue
        gains = [1.0 if item in truth else 0.0 for item in items[:k]]
        found = sum(gains)
        ideal = sum(1.0 / math.log2(position + 2) for position in range(min(len(truth), k)))
        per_query[f"recall@{k}"].append(found / len(truth))
        per_query[f"ndcg@{k}"].append(
            sum(gain / math.log2(position + 2) for position, gain in enumerate(gains)) / ideal
        )
        per_query[f"hitrate@{k}"].append(float(found > 0))
    return per_query


def ranking_metrics(ranked: Sequence[Sequence[str]], relevant: Sequence[frozenset[str]], k: int) -> dict[str, float]:
    """Mean Recall@k, NDCG@k (binary relevance) and HitRate@k over queries with something relevant,
    each with its standard error over those queries (`_se`: sample std / sqrt(n))."""
    return _means(per_query_metrics(ranked, relevant, k))


def paired_difference(
    ranked: Sequence[Sequence[str]], baseline: Sequence[Sequence[str]], relevant: Sequence[frozenset[str]], k: int
) -> dict[str, float]:
    """Each metric of `ranked` minus that of `baseline` on the same queries, averaged, with the
    standard error of the per-query differences (far smaller than either list's own when the two
    answers mostly agree)."""
    ours, theirs = per_query_metrics(ranked, relevant, k), per_query_metrics(baseline, relevant, k)
    return _means({name: list(np.subtract(values, theirs[name])) for name, values in ours.items()})


def _means(per_query: dict[str, list[float]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, values in per_query.items():
        count = len(values)
        metrics[name] = float(np.mean(values)) if count else math.nan
        metrics[f"{name}_se"] = float(np.std(values, ddof=1) / math.sqrt(count)) if count > 1 else math.nan
    return metrics


def bootstrap_interval(
    values: Sequence[float], users: Sequence[str] | None = None, rounds: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """The 95 % percentile-bootstrap interval of the mean of `values`, resampling users with
    replacement: each drawn user brings all of their values (`users[i]` is value i's user; None:
    one value per user). A user's consecutive queries share most of their relevant items, so they
    are drawn together rather than counted as independent."""
    values = np.asarray(values, np.float64)
    owner = np.unique(users, return_inverse=True)[1] if users is not None else np.arange(len(values))
    sums, counts = np.bincount(owner, weights=values), np.bincount(owner)
    drawn = np.random.default_rng(seed).integers(0, len(sums), (rounds, len(sums)))
    low, high = np.quantile(sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1), [0.025, 0.975])
    return float(low), float(high)
