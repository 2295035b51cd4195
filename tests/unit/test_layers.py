"""The Keras layers and models, checked against numbers computed by hand."""

import math

import numpy as np
import pytest
import tensorflow as tf

from schemas.hyperparameters import Hyperparameters
from training.layers import (
    AGE_BUCKETS,
    AttentionPooling,
    AttentionUnit,
    Dice,
    ItemEmbedding,
    MaskedMeanPooling,
    PairAttentionUnit,
    Standardise,
    age_buckets,
)
from training.models import (
    DeepInterestNetwork,
    EmbeddingMLP,
    ItemTables,
    LikeReweighted,
    Ranker,
    SequentialRetrieval,
    ranking_loss,
)


@pytest.fixture(autouse=True)
def seeded_weights() -> None:
    """Fresh layers draw the same initial weights on every run, so a threshold on their outputs is not a lottery."""
    tf.keras.utils.set_random_seed(0)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def inference_dice(alpha: float, mean: float = 0.0, variance: float = 1.0) -> Dice:
    dice = Dice(epsilon=0.0)
    dice.build((None, 1))
    dice.alpha.assign([alpha])
    dice.normalise.moving_mean.assign([mean])
    dice.normalise.moving_variance.assign([variance])
    return dice


def test_dice_mixes_identity_and_alpha_slope_by_the_normalised_input():
    dice = inference_dice(alpha=0.5, mean=1.0, variance=4.0)

    out = dice(tf.constant([[5.0], [-3.0]]), training=False).numpy()[:, 0]

    # x=5: p = sigmoid((5-1)/2) = sigmoid(2); x=-3: p = sigmoid(-2)
    p_up, p_down = sigmoid(2.0), sigmoid(-2.0)
    assert out == pytest.approx([p_up * 5 + (1 - p_up) * 0.5 * 5, p_down * -3 + (1 - p_down) * 0.5 * -3], rel=1e-5)
    assert out[0] == pytest.approx(4.70198, rel=1e-5)


def test_dice_in_training_normalises_with_the_batch_statistics():
    dice = inference_dice(alpha=0.0)

    out = dice(tf.constant([[1.0], [3.0]]), training=True).numpy()[:, 0]

    # batch mean 2, variance 1: p = sigmoid(-1), sigmoid(1); alpha 0 keeps p * x
    assert out == pytest.approx([sigmoid(-1.0) * 1, sigmoid(1.0) * 3], rel=1e-5)


def attention_unit(w_query, w_key, w_product, bias=0.0) -> AttentionUnit:
    unit = AttentionUnit(hidden=1)
    unit.build((None, None, len(w_query)))
    unit.w_query.assign(np.array(w_query, dtype=np.float32).reshape(-1, 1))
    unit.w_key.assign(np.array(w_key, dtype=np.float32).reshape(-1, 1))
    unit.w_product.assign(np.array(w_product, dtype=np.float32).reshape(-1, 1))
    unit.bias.assign([bias])
    unit.activation.normalise.moving_mean.assign([0.0])
    unit.activation.normalise.moving_variance.assign([1.0])
    unit.activation.alpha.assign([0.0])
    unit.out.set_weights([np.ones((1, 1), np.float32), np.zeros(1, np.float32)])
    return unit


def test_attention_unit_weight_by_hand_and_zero_for_padding():
    unit = attention_unit(w_query=[1.0], w_key=[1.0], w_product=[1.0], bias=-1.0)
    query = tf.constant([[[2.0]]])  # B=1, M=1, D=1
    keys = tf.constant([[[3.0], [0.5]]])  # L=2

    weights = unit(query, keys, tf.constant([[True, False]]), training=False).numpy()

    hidden = 2 + 3 + 2 * 3 - 1  # q·Wq + k·Wk + (q*k)·Wp + b = 10
    assert weights.shape == (1, 1, 2)
    assert weights[0, 0, 0] == pytest.approx(sigmoid(hidden) * hidden, rel=1e-5)  # Dice with alpha 0, then w=1
    assert weights[0, 0, 1] == 0.0


def test_attention_unit_equals_a_dense_layer_over_query_key_difference_product():
    rng = np.random.default_rng(3)
    w1, w2, w3, w4 = (rng.normal(size=2) for _ in range(4))  # weights of q, k, q-k, q*k in the concatenation
    unit = attention_unit(w_query=w1 + w3, w_key=w2 - w3, w_product=w4)
    query, keys = rng.normal(size=(1, 3, 2)), rng.normal(size=(1, 4, 2))

    weights = unit(tf.constant(query, tf.float32), tf.constant(keys, tf.float32), tf.ones((1, 4), bool)).numpy()

    for m in range(3):
        for n in range(4):
            q, k = query[0, m], keys[0, n]
            hidden = q @ w1 + k @ w2 + (q - k) @ w3 + (q * k) @ w4
            assert weights[0, m, n] == pytest.approx(sigmoid(hidden) * hidden, rel=1e-4, abs=1e-6)


def test_attention_pooling_is_the_unnormalised_weighted_sum():
    pooled = AttentionPooling()(tf.constant([[[0.5, 2.0]]]), tf.constant([[[1.0, 0.0], [0.0, 1.0]]])).numpy()

    assert pooled.tolist() == [[[0.5, 2.0]]]


def test_masked_mean_pooling_ignores_padding_and_gives_zeros_when_empty():
    values = tf.constant([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[7.0, 7.0], [8.0, 8.0], [9.0, 9.0]]])
    mask = tf.constant([[True, True, False], [False, False, False]])

    assert MaskedMeanPooling()(values, mask).numpy().tolist() == [[2.0, 3.0], [0.0, 0.0]]


def test_item_embedding_concatenates_id_mean_genre_and_year():
    genres = np.array([[0, 0], [0, 0], [1, 2], [2, 0]], dtype=np.int32)[:, :2]
    genre_table = np.zeros((4, 8), np.int32)
    genre_table[:, :2] = genres
    layer = ItemEmbedding(genre_table, np.array([0, 0, 3, 5], np.int32), genre_count=2, id_dim=1)
    layer.build((None,))
    layer.ids.embeddings.assign(np.arange(4, dtype=np.float32).reshape(4, 1))
    layer.genres.embeddings.assign(np.repeat(np.array([[0.0], [10.0], [20.0]], np.float32), 8, axis=1))
    layer.years.embeddings.assign(np.repeat(np.arange(32, dtype=np.float32).reshape(32, 1), 4, axis=1))

    out = layer(tf.constant([2, 3])).numpy()

    assert out.shape == (2, 1 + 8 + 4)
    assert out[0, 0] == 2.0 and out[0, 1] == 15.0 and out[0, -1] == 3.0  # genres 1 and 2: mean of 10 and 20
    assert out[1, 0] == 3.0 and out[1, 1] == 20.0 and out[1, -1] == 5.0


def test_age_buckets_are_rounded_log2_seconds_clipped_to_the_table():
    ages = tf.constant([-5.0, 0.0, 1.0, 2.0, 3.0, 1000.0, 1e30])

    assert age_buckets(ages).numpy().tolist() == [0, 0, 1, 2, 2, 10, AGE_BUCKETS - 1]  # log2(1+1000) = 9.97


def test_pair_attention_adds_the_pair_term_to_the_first_layer():
    unit = PairAttentionUnit(hidden=1)
    unit.build((None, None, 1))
    for weight, value in ((unit.w_query, 1.0), (unit.w_key, 1.0), (unit.w_product, 1.0), (unit.w_pair, 2.0)):
        weight.assign(np.full(weight.shape, value, np.float32))
    unit.bias.assign([-1.0])
    unit.activation.alpha.assign([0.0])
    unit.out.set_weights([np.ones((1, 1), np.float32), np.zeros(1, np.float32)])

    weights = unit(tf.constant([[[2.0]]]), tf.constant([[[3.0]]]), tf.constant([[True]]), tf.constant([[[0.5]]]),
                   training=False).numpy()  # fmt: skip

    hidden = 2 + 3 + 2 * 3 - 1 + 2 * 0.5  # the AttentionUnit's 10, plus pair·w_pair
    assert weights[0, 0, 0] == pytest.approx(sigmoid(hidden) * hidden, rel=1e-5)


def test_standardise_takes_mean_and_spread_of_the_training_features_and_leaves_constant_ones_centred():
    layer = Standardise()
    layer.fit(np.array([[[1.0, 5.0]], [[3.0, 5.0]]], np.float32))

    assert layer(tf.constant([[2.0, 5.0], [5.0, 6.0]])).numpy().tolist() == [[0.0, 0.0], [3.0, 1.0]]


def small_tables() -> ItemTables:
    rng = np.random.default_rng(0)
    return ItemTables(rng.integers(0, 3, (12, 8)).astype(np.int32), rng.integers(0, 32, 12).astype(np.int32), 2)


def small_ranker(ranker_class: type[Ranker], behaviours: int) -> Ranker:
    spec = Hyperparameters(ranker_width=16, like_weight=0.5, ranker_behaviours=behaviours, ranker_attention_width=8)
    return ranker_class.of(small_tables(), spec, "ranker")


def test_the_user_state_at_a_position_depends_on_earlier_behaviours_only():
    model = SequentialRetrieval(small_tables(), dim=16, length=4, dropout=0.0)
    items, kinds = np.array([[0, 4, 5, 6]], np.int32), np.array([[0, 1, 2, 1]], np.int32)
    ages = np.array([[0.0, 300.0, 20.0, 5.0]], np.float32)

    before = model.encode(items, kinds, ages).numpy()
    changed = model.encode(np.array([[0, 4, 5, 9]], np.int32), kinds, ages).numpy()

    np.testing.assert_allclose(before[0, 1:3], changed[0, 1:3], rtol=1e-5, atol=1e-6)  # positions before the change
    assert np.abs(before[0, 3] - changed[0, 3]).max() > 1e-3


def test_the_user_vector_is_the_state_after_the_newest_behaviour_though_the_last_block_computes_only_it():
    model = SequentialRetrieval(small_tables(), dim=16, length=5, blocks=3, dropout=0.0)
    rng = np.random.default_rng(3)
    items = np.array([[0, 0, 4, 5, 6], [2, 3, 9, 7, 11], [0, 0, 0, 0, 8]], np.int32)
    kinds = np.where(items > 0, rng.integers(1, 5, items.shape), 0).astype(np.int32)
    ages = np.where(items > 0, rng.uniform(0, 1e6, items.shape), 0).astype(np.float32)

    vectors = model.user_vectors(items, kinds, ages).numpy()

    np.testing.assert_allclose(vectors, model.encode(items, kinds, ages).numpy()[:, -1], rtol=1e-5, atol=1e-6)


def test_next_item_loss_is_the_full_softmax_over_the_catalogue_at_labelled_positions():
    model = SequentialRetrieval(small_tables(), dim=16, length=3, dropout=0.0)
    items, kinds, ages = np.array([[0, 4, 5]], np.int32), np.array([[0, 1, 1]], np.int32), np.zeros((1, 3), np.float32)
    targets = np.array([[0, 5, 7]], np.int32)

    loss = float(model.next_item_loss(items, kinds, ages, targets, training=False))

    states = model.encode(items, kinds, ages).numpy()[0]
    logits = states @ model.item_vectors(np.arange(12)).numpy().T
    logits[:, :2] = -np.inf  # padding and unknown are never an answer
    expected = np.mean([np.log(np.exp(logits[p]).sum()) - logits[p, t] for p, t in ((1, 5), (2, 7))])
    assert loss == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("ranker_class", [DeepInterestNetwork, EmbeddingMLP])
def test_scoring_all_candidates_at_once_equals_scoring_each_alone(ranker_class):
    ranker = small_ranker(ranker_class, behaviours=4)
    items = tf.constant([[0, 0, 4, 5], [2, 3, 6, 7]])
    kinds = tf.constant([[0, 0, 1, 2], [3, 1, 1, 4]])
    ages = tf.constant([[0.0, 0.0, 60.0, 2.0], [9e5, 3e4, 100.0, 1.0]])
    candidates = tf.constant([[8, 9, 10], [11, 2, 4]])
    features = tf.constant(np.random.default_rng(1).normal(size=(2, 3, 10)), tf.float32)
    pairs = tf.constant(np.random.default_rng(2).random((2, 3, 4)), tf.float32)

    together, attention = ranker.served_scores(items, kinds, ages, candidates, features, pairs)
    alone = [ranker.served_scores(items, kinds, ages, candidates[:, m : m + 1], features[:, m : m + 1],
                                  pairs[:, m : m + 1])[0][:, 0] for m in range(3)]  # fmt: skip

    np.testing.assert_allclose(together.numpy(), tf.stack(alone, axis=1).numpy(), rtol=1e-5, atol=1e-6)
    if ranker_class is DeepInterestNetwork:
        assert attention.shape == (2, 3, 4)
        assert np.all(attention.numpy()[0, :, :2] == 0.0)  # padding gets no attention
    else:
        assert attention is None


def test_din_is_built_with_the_hyperparameters_attention_width():
    ranker = small_ranker(DeepInterestNetwork, behaviours=2)
    pairs = tf.zeros((1, 1, 2))
    ranker.served_scores(tf.constant([[3, 4]]), tf.constant([[1, 1]]), tf.constant([[5.0, 1.0]]),
                         tf.constant([[6]]), tf.zeros((1, 1, 10)), pairs)  # fmt: skip

    assert ranker.attention.w_key.shape == (16, 8)  # small_ranker's ranker_width, ranker_attention_width


@pytest.mark.parametrize("ranker_class", [DeepInterestNetwork, EmbeddingMLP])
def test_a_ranker_reads_only_its_newest_behaviours(ranker_class):
    ranker = small_ranker(ranker_class, behaviours=2)
    candidates = tf.constant([[8, 9, 10]])
    features = tf.constant(np.random.default_rng(1).normal(size=(1, 3, 10)), tf.float32)
    pairs = tf.constant(np.random.default_rng(2).random((1, 3, 2)), tf.float32)

    def scores(items, kinds, ages):
        served, attention = ranker.served_scores(tf.constant([items]), tf.constant([kinds]), tf.constant([ages]),
                                                 candidates, features, pairs)  # fmt: skip
        assert attention is None or attention.shape == (1, 3, 2)
        return served.numpy()

    served = scores([0, 3, 6, 7], [0, 1, 1, 4], [0.0, 500.0, 100.0, 1.0])
    older_changed = scores([5, 9, 6, 7], [2, 3, 1, 4], [9e5, 7.0, 100.0, 1.0])
    newer_changed = scores([0, 3, 5, 7], [0, 1, 1, 4], [0.0, 500.0, 100.0, 1.0])

    np.testing.assert_allclose(older_changed, served, rtol=1e-6)
    # untrained attention moves scores by 1e-4 to 1e-3; ten times the equality tolerance above is a real change
    assert np.abs(newer_changed - served).max() > 1e-5


def test_the_served_score_is_the_next_logit_plus_like_weight_times_log_sigmoid_of_the_like_logit():
    ranker = EmbeddingMLP(small_tables(), width=16, like_weight=0.5, behaviours=2)
    inputs = {
        "items": tf.constant([[0, 4]]),
        "kinds": tf.constant([[0, 1]]),
        "ages": tf.constant([[0.0, 9.0]]),
        "candidates": tf.constant([[5, 6]]),
        "features": tf.zeros((1, 2, 10)),
        "pairs": tf.zeros((1, 2, 2)),
    }

    next_logits, like_logits, _ = ranker(inputs)
    served, _ = ranker.served_scores(*inputs.values())

    expected = next_logits.numpy() + 0.5 * np.log(1 / (1 + np.exp(-like_logits.numpy())))
    np.testing.assert_allclose(served.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("like_weight", [0.0, 2.0])
def test_a_ranker_served_with_another_like_weight_changes_only_the_weight_of_log_p_like(like_weight):
    ranker = EmbeddingMLP(small_tables(), width=16, like_weight=0.5, behaviours=2)
    inputs = {"items": tf.constant([[0, 4]]), "kinds": tf.constant([[0, 1]]), "ages": tf.constant([[0.0, 9.0]]),
              "candidates": tf.constant([[5, 6]]), "features": tf.zeros((1, 2, 10)),
              "pairs": tf.zeros((1, 2, 2))}  # fmt: skip

    next_logits, like_logits, _ = ranker(inputs)
    served, _ = LikeReweighted(ranker, like_weight).served_scores(*inputs.values())

    expected = next_logits.numpy() + like_weight * np.log(1 / (1 + np.exp(-like_logits.numpy())))
    np.testing.assert_allclose(served.numpy(), expected, rtol=1e-5)
    assert ranker.like_weight == 0.5 and LikeReweighted(ranker, like_weight).behaviours == 2


def test_the_ranking_loss_is_the_softmax_over_a_rows_candidates_plus_the_like_loss_of_rated_rows():
    ranker = EmbeddingMLP(small_tables(), width=16, like_weight=0.5, behaviours=2)
    inputs = {"items": tf.constant([[0, 4], [3, 4]]), "kinds": tf.constant([[0, 1], [1, 1]]),
              "ages": tf.zeros((2, 2)), "candidates": tf.constant([[5, 6, 7], [8, 9, 10]]),
              "features": tf.zeros((2, 3, 10)), "pairs": tf.zeros((2, 3, 2))}  # fmt: skip
    liked, rated = tf.constant([1.0, 0.0]), tf.constant([1.0, 0.0])

    loss = float(ranking_loss(ranker, inputs, liked, rated))

    next_logits, like_logits = (np.asarray(out) for out in ranker(inputs, training=True)[:2])
    chosen = np.mean([np.log(np.exp(row).sum()) - row[0] for row in next_logits])
    like = np.log(1 + np.exp(-like_logits[0, 0]))  # row 0 is rated and liked; row 1 carries no like label
    assert loss == pytest.approx(chosen + like, rel=1e-4)
