"""Evaluation metrics against hand-computed values."""

import math

import numpy as np
import pytest

from training.metrics import auc, bootstrap_interval, gauc, paired_difference, ranking_metrics


def test_auc_counts_correctly_ordered_pairs_and_ties_as_half():
    assert auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.1])) == pytest.approx(3 / 4)
    assert auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_gauc_weights_each_users_auc_by_their_samples_and_skips_one_class_users():
    users = ["a", "a", "b", "b", "b", "b", "c"]
    labels = np.array([1, 0, 1, 0, 0, 0, 1])
    scores = np.array([0.9, 0.1, 0.1, 0.2, 0.3, 0.4, 0.5])

    assert gauc(users, labels, scores) == pytest.approx((2 * 1.0 + 4 * 0.0) / 6)


def test_ranking_metrics_by_hand():
    metrics = ranking_metrics([["a", "b", "c"], ["x", "y", "z"]], [frozenset({"b", "d"}), frozenset({"q"})], k=2)

    ndcg_first = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    # two queries with values v and 0: sample std v/sqrt(2), standard error v/2
    assert metrics == pytest.approx(
        {
            "recall@2": 0.25,
            "ndcg@2": ndcg_first / 2,
            "hitrate@2": 0.5,
            "recall@2_se": 0.25,
            "ndcg@2_se": ndcg_first / 2,
            "hitrate@2_se": 0.5,
        }
    )


def test_ranking_metrics_skip_queries_with_nothing_relevant():
    assert ranking_metrics([["a"], ["b"]], [frozenset({"a"}), frozenset()], k=1)["recall@1"] == 1.0


def test_paired_difference_subtracts_per_query_and_takes_the_differences_standard_error():
    relevant = [frozenset({"a"}), frozenset({"b"}), frozenset({"c"})]
    ours = [["a", "x"], ["x", "b"], ["x", "y"]]
    theirs = [["x", "a"], ["x", "b"], ["c", "y"]]

    difference = paired_difference(ours, theirs, relevant, k=2)

    # per-query hit-rate differences 0, 0, -1: mean -1/3, sample std sqrt(1/3), standard error 1/3
    assert difference["hitrate@2"] == pytest.approx(-1 / 3) and difference["hitrate@2_se"] == pytest.approx(1 / 3)
    # NDCG@2 differences: 1 - 1/log2(3), 0, -1
    ndcg = [1 - 1 / math.log2(3), 0.0, -1.0]
    assert difference["ndcg@2"] == pytest.approx(np.mean(ndcg))
    assert difference["ndcg@2_se"] == pytest.approx(np.std(ndcg, ddof=1) / math.sqrt(3))


def test_the_bootstrap_interval_of_a_constant_is_the_constant():
    assert bootstrap_interval([0.25] * 40) == (0.25, 0.25)


def test_the_bootstrap_interval_of_hits_matches_the_normal_one_by_hand():
    hits = [1.0] * 100 + [0.0] * 300  # mean 0.25; by hand 1.96 · sqrt(0.25 · 0.75 / 400) = 0.0424
    low, high = bootstrap_interval(hits, rounds=4000)

    assert low == pytest.approx(0.25 - 0.0424, abs=0.006) and high == pytest.approx(0.25 + 0.0424, abs=0.006)


def test_a_users_queries_are_drawn_together():
    # Two users: one with 99 hits, one with a single miss. Drawn by query the mean stays near 0.99;
    # drawn by user a resample is (light, light) = 0, a mix = 0.99 or (heavy, heavy) = 1, each pure
    # pair a quarter of the time, so the 95 % interval is 0 to 1.
    values, users = [1.0] * 99 + [0.0], ["heavy"] * 99 + ["light"]

    by_query, by_user = bootstrap_interval(values), bootstrap_interval(values, users)

    assert by_query[0] > 0.95
    assert by_user == (0.0, 1.0)
