"""The NumPy forward passes the service runs equal the Keras models they were exported from."""

import numpy as np
import pytest

from schemas.logic.served_models import DinRanker, UserTower, age_buckets
from tests.unit.test_layers import small_tables
from training.export import ranker_arrays, user_tower_arrays
from training.layers import age_buckets as keras_age_buckets
from training.models import DeepInterestNetwork, SequentialRetrieval

ROWS, LENGTH, CANDIDATES, BEHAVIOURS = 3, 6, 7, 4


def randomised(model, seed: int) -> None:
    """Every learnt weight random (Dice's statistics and the PReLU slopes too, which start at 0 and 1),
    so that no folded term can vanish by its initial value; the item tables stay the catalogue's."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if weight.dtype == "int32":
            continue
        low = 0.5 if "variance" in weight.path or weight.path.endswith("std") else -0.8
        weight.assign(rng.uniform(low, 1.0, weight.shape).astype(np.float32))


def sequences(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    items = rng.integers(1, 12, (ROWS, LENGTH)).astype(np.int32)
    items[0, :2] = 0  # left padding
    items[2, :-1] = 0  # one behaviour
    kinds = np.where(items > 0, rng.integers(1, 5, items.shape), 0).astype(np.int32)
    ages = np.where(items > 0, np.sort(rng.uniform(0, 3e7, items.shape))[:, ::-1], 0).astype(np.float32)
    return items, kinds, ages


def test_age_buckets_equal_the_models():
    seconds = np.array([-5.0, 0.0, 0.4, 1.0, 2.9, 3.0, 1e3, 86_400.0, 2.6e8, 1e12], np.float32)

    assert age_buckets(seconds).tolist() == np.asarray(keras_age_buckets(seconds)).tolist()


def test_the_user_tower_equals_the_keras_user_vectors():
    model = SequentialRetrieval(small_tables(), dim=16, length=LENGTH, blocks=2, heads=2, dropout=0.0)
    items, kinds, ages = sequences(1)
    model.user_vectors(items, kinds, ages)  # built
    randomised(model, 2)

    served = UserTower(user_tower_arrays(model), heads=2)(items, kinds, ages)

    np.testing.assert_allclose(served, model.user_vectors(items, kinds, ages).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("like_weight", [0.0, 0.5])
def test_the_ranker_equals_the_keras_din_scores_and_attention(like_weight):
    model = DeepInterestNetwork(small_tables(), width=16, like_weight=like_weight, behaviours=BEHAVIOURS)
    items, kinds, ages = sequences(3)
    rng = np.random.default_rng(4)
    candidates = rng.integers(1, 12, (ROWS, CANDIDATES)).astype(np.int32)
    features = rng.normal(size=(ROWS, CANDIDATES, 10)).astype(np.float32)
    pairs = rng.random((ROWS, CANDIDATES, BEHAVIOURS)).astype(np.float32)
    model.served_scores(items, kinds, ages, candidates, features, pairs)  # built
    randomised(model, 5)

    scores, attention = DinRanker(ranker_arrays(model), BEHAVIOURS, like_weight)(
        items, kinds, ages, candidates, features, pairs
    )

    expected_scores, expected_attention = model.served_scores(items, kinds, ages, candidates, features, pairs)
    np.testing.assert_allclose(attention, expected_attention.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=1e-4, atol=1e-4)
    assert np.all(attention[2, :, :-1] == 0.0)  # padding gets no attention
