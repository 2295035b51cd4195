"""The NumPy forward passes the service runs equal the Keras models they were exported from."""

import warnings

import numpy as np
import pytest

from schemas.runtime import served_models
from schemas.runtime.model_inputs import FIRST_ITEM, UNKNOWN_ITEM
from schemas.runtime.served_models import DinRanker, UserTower, age_buckets
from tests.unit.test_layers import small_tables
from training.export import ranker_arrays, user_tower_arrays
from training.layers import age_buckets as keras_age_buckets
from training.models import DeepInterestNetwork, ItemTables, SequentialRetrieval

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


def ranker_inputs(first_candidate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates [ROWS, CANDIDATES] from `first_candidate` to 11, their features and co-visitation pairs."""
    rng = np.random.default_rng(4)
    candidates = rng.integers(first_candidate, 12, (ROWS, CANDIDATES)).astype(np.int32)
    features = rng.normal(size=(ROWS, CANDIDATES, 10)).astype(np.float32)
    pairs = rng.random((ROWS, CANDIDATES, BEHAVIOURS)).astype(np.float32)
    return candidates, features, pairs


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
    model = DeepInterestNetwork(
        small_tables(), width=16, like_weight=like_weight, behaviours=BEHAVIOURS, attention_width=12
    )
    items, kinds, ages = sequences(3)
    candidates, features, pairs = ranker_inputs(first_candidate=1)
    model.served_scores(items, kinds, ages, candidates, features, pairs)  # built
    randomised(model, 5)

    scores, attention = DinRanker(ranker_arrays(model), BEHAVIOURS, like_weight)(
        items, kinds, ages, candidates, features, pairs
    )

    expected_scores, expected_attention = model.served_scores(items, kinds, ages, candidates, features, pairs)
    np.testing.assert_allclose(attention, expected_attention.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=1e-4, atol=1e-4)
    assert np.all(attention[2, :, :-1] == 0.0)  # padding gets no attention


def test_the_rankers_attention_gate_saturates_as_keras_where_dices_input_is_far_from_its_mean():
    """With Dice's variance tiny its normalised input reaches thousands: exp overflows to inf in
    float32, and the gate must still close (0) or open (1) as the sigmoid does, without a warning."""
    model = DeepInterestNetwork(small_tables(), width=16, like_weight=0.5, behaviours=BEHAVIOURS, attention_width=12)
    items, kinds, ages = sequences(3)
    candidates, features, pairs = ranker_inputs(first_candidate=1)
    model.served_scores(items, kinds, ages, candidates, features, pairs)  # built
    randomised(model, 5)
    (variance,) = [w for w in model.weights if "attention" in w.path and "moving_variance" in w.path]
    variance.assign(np.full(variance.shape, 1e-7, np.float32))

    ranker = DinRanker(ranker_arrays(model), BEHAVIOURS, 0.5)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # NumPy's overflow warning
        scores, attention = ranker(items, kinds, ages, candidates, features, pairs)

    expected_scores, expected_attention = model.served_scores(items, kinds, ages, candidates, features, pairs)
    np.testing.assert_allclose(attention, expected_attention.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=1e-4, atol=1e-4)


def test_a_new_items_row_is_no_id_beside_the_mean_of_its_genres_and_its_years_embedding():
    # rows: [id, id | genre mean | year]; genre embeddings 1 -> [1, 2], 2 -> [5, 0]; years 0 -> 0, 1 -> 0.5
    arrays = {"items": np.ones((4, 5), np.float32), "content/genres": np.array([[0, 0], [1, 2], [5, 0]], np.float32),
              "content/years": np.array([[0], [0.5]], np.float32)}  # fmt: skip
    genres, years = np.array([[2, 0], [1, 2], [0, 0]], np.int32), np.array([1, 0, 1], np.int32)

    rows = served_models.new_item_rows(arrays, genres, years)

    np.testing.assert_allclose(rows, [[0, 0, 5, 0, 0.5], [0, 0, 3, 1, 0], [0, 0, 0, 0, 0.5]])


def tables_whose_unknown_id_has_the_content_of(item: int) -> ItemTables:
    """small_tables() with the out-of-vocabulary row given `item`'s genres and year."""
    tables = small_tables()
    genres, years = tables.genre_table.copy(), tables.year_table.copy()
    genres[UNKNOWN_ITEM], years[UNKNOWN_ITEM] = genres[item], years[item]
    return ItemTables(genres, years, tables.genre_count)


NEW_CONTENT_OF = 5  # the known item whose genres and year the new item gets


def known_items_only(items, kinds, ages):
    """The sequences with UNKNOWN_ITEM behaviours made FIRST_ITEM: `as_a_new_item` changes its embedding."""
    return np.where(items == UNKNOWN_ITEM, FIRST_ITEM, items), kinds, ages


def as_a_new_item(item_embedding) -> None:
    """Keras then embeds UNKNOWN_ITEM as the service embeds a new item of its content: no id embedding."""
    ids = item_embedding.ids.embeddings
    ids.assign(np.concatenate([ids[:UNKNOWN_ITEM], np.zeros_like(ids[:1]), ids[FIRST_ITEM:]]))


def test_a_new_item_embeds_in_the_user_tower_as_keras_embeds_the_unknown_id_with_its_content():
    tables = tables_whose_unknown_id_has_the_content_of(NEW_CONTENT_OF)
    model = SequentialRetrieval(tables, dim=16, length=LENGTH, blocks=2, heads=2, dropout=0.0)
    items, kinds, ages = known_items_only(*sequences(1))
    model.user_vectors(items, kinds, ages)  # built
    randomised(model, 2)
    content = tables.genre_table[[NEW_CONTENT_OF]], tables.year_table[[NEW_CONTENT_OF]]

    grown, vectors = UserTower(user_tower_arrays(model), heads=2).with_items(*content)

    as_a_new_item(model.items)
    new_index = len(tables.year_table)
    np.testing.assert_allclose(vectors, model.item_vectors(np.array([UNKNOWN_ITEM])).numpy(), rtol=1e-5, atol=1e-6)
    with_new, as_unknown = items.copy(), items.copy()
    with_new[:, -1], as_unknown[:, -1] = new_index, UNKNOWN_ITEM
    expected = model.user_vectors(as_unknown, kinds, ages).numpy()
    np.testing.assert_allclose(grown(with_new, kinds, ages), expected, rtol=1e-4, atol=1e-5)


def test_a_new_item_ranks_in_din_as_keras_ranks_the_unknown_id_with_its_content():
    tables = tables_whose_unknown_id_has_the_content_of(NEW_CONTENT_OF)
    model = DeepInterestNetwork(tables, width=16, like_weight=0.5, behaviours=BEHAVIOURS, attention_width=12)
    items, kinds, ages = known_items_only(*sequences(3))
    candidates, features, pairs = ranker_inputs(first_candidate=2)
    model.served_scores(items, kinds, ages, candidates, features, pairs)  # built
    randomised(model, 5)
    content = tables.genre_table[[NEW_CONTENT_OF]], tables.year_table[[NEW_CONTENT_OF]]
    original = DinRanker(ranker_arrays(model), BEHAVIOURS, 0.5)

    grown = original.with_items(*content)

    as_a_new_item(model.items)
    new_index = len(tables.year_table)
    with_new, as_unknown = (candidates.copy(), items.copy()), (candidates.copy(), items.copy())
    with_new[0][:, 0], with_new[1][:, -1] = new_index, new_index
    as_unknown[0][:, 0], as_unknown[1][:, -1] = UNKNOWN_ITEM, UNKNOWN_ITEM
    scores, attention = grown(with_new[1], kinds, ages, with_new[0], features, pairs)
    expected_scores, expected_attention = model.served_scores(
        as_unknown[1], kinds, ages, as_unknown[0], features, pairs
    )
    np.testing.assert_allclose(attention, expected_attention.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=1e-4, atol=1e-4)
    assert len(original.items) == new_index  # the live ranker is left as it was


CHANGED, CONTENT_FROM = 5, 7  # the catalogue gives item 5 the genres and year of item 7


def given_new_content(item_embedding, tables) -> None:
    """Keras's item embedding with CHANGED's lookup rows set to CONTENT_FROM's, as a catalogue change would."""
    genres, years = tables.genre_table.copy(), tables.year_table.copy()
    genres[CHANGED], years[CHANGED] = genres[CONTENT_FROM], years[CONTENT_FROM]
    item_embedding.genre_lookup.assign(genres)
    item_embedding.year_lookup.assign(years)


def test_a_changed_items_rows_in_the_user_tower_equal_keras_with_its_new_content():
    tables = small_tables()
    model = SequentialRetrieval(tables, dim=16, length=LENGTH, blocks=2, heads=2, dropout=0.0)
    items, kinds, ages = sequences(1)
    items[:, -1] = CHANGED
    model.user_vectors(items, kinds, ages)  # built
    randomised(model, 2)
    tower, indices = UserTower(user_tower_arrays(model), heads=2), np.array([CHANGED])
    old, new = [(tables.genre_table[[n]], tables.year_table[[n]]) for n in (CHANGED, CONTENT_FROM)]
    before = tower(items, kinds, ages)

    changed, vectors = tower.with_content(indices, *new)

    assert tower.content_differs(indices, *new).tolist() == [True] and not tower.content_differs(indices, *old).any()
    given_new_content(model.items, tables)
    np.testing.assert_allclose(vectors, model.item_vectors(indices).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        changed(items, kinds, ages), model.user_vectors(items, kinds, ages), rtol=1e-4, atol=1e-5
    )
    assert not changed.content_differs(indices, *new).any()
    np.testing.assert_array_equal(tower(items, kinds, ages), before)  # the live tower is left as it was


def test_a_changed_items_rows_in_din_equal_keras_with_its_new_content():
    tables = small_tables()
    model = DeepInterestNetwork(tables, width=16, like_weight=0.5, behaviours=BEHAVIOURS, attention_width=12)
    items, kinds, ages = sequences(3)
    items[:, -1] = CHANGED
    candidates, features, pairs = ranker_inputs(first_candidate=1)
    candidates[:, 0] = CHANGED
    model.served_scores(items, kinds, ages, candidates, features, pairs)  # built
    randomised(model, 5)
    original = DinRanker(ranker_arrays(model), BEHAVIOURS, 0.5)
    before = original(items, kinds, ages, candidates, features, pairs)[0]

    changed = original.with_content(np.array([CHANGED]), tables.genre_table[[CONTENT_FROM]],
                                    tables.year_table[[CONTENT_FROM]])  # fmt: skip

    given_new_content(model.items, tables)
    scores, attention = changed(items, kinds, ages, candidates, features, pairs)
    expected_scores, expected_attention = model.served_scores(items, kinds, ages, candidates, features, pairs)
    np.testing.assert_allclose(attention, expected_attention.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(scores, before, rtol=1e-4, atol=1e-4)  # the change moved the scores
    np.testing.assert_array_equal(original(items, kinds, ages, candidates, features, pairs)[0], before)
