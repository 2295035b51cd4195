"""The Keras layers and models, checked against numbers computed by hand."""

import math

import numpy as np
import pytest
import tensorflow as tf

from training.layers import AttentionPooling, AttentionUnit, Dice, ItemEmbedding, MaskedMeanPooling
from training.models import DeepInterestNetwork, EmbeddingMLP, ItemTables, TwoTower


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


class FixedTowers(TwoTower):
    """Towers replaced by given vectors, to check the loss by hand."""

    def __init__(self, users, items):
        super().__init__(ItemTables(np.zeros((2, 8), np.int32), np.zeros(2, np.int32), 1, 2), dim=2, temperature=1.0)
        self.fixed_users, self.fixed_items = tf.constant(users), tf.constant(items)

    def user_vectors(self, sequence, kinds, user_features):
        return self.fixed_users

    def item_vectors(self, items):
        return self.fixed_items


@pytest.mark.parametrize(
    ("items", "log_q", "expected"),
    [
        ([5, 6], [0.0, 0.0], math.log(1 + math.exp(-1))),  # each row: softmax over logits [1, 0]
        (
            [5, 6],
            [0.0, math.log(0.25)],
            (math.log(1 + math.exp(math.log(4) - 1)) + math.log(1 + math.exp(-1 - math.log(4)))) / 2,
        ),
        ([5, 5], [0.0, 0.0], 0.0),  # the other row holds the same item: no negative left
    ],
)
def test_in_batch_softmax_with_logq_correction_by_hand(items, log_q, expected):
    towers = FixedTowers(users=[[1.0, 0.0], [0.0, 1.0]], items=[[1.0, 0.0], [0.0, 1.0]])

    loss = towers.in_batch_loss(None, None, None, tf.constant(items), tf.constant(log_q), logq_weight=1.0)

    assert float(loss) == pytest.approx(expected, rel=1e-5)


def small_tables() -> ItemTables:
    rng = np.random.default_rng(0)
    return ItemTables(rng.integers(0, 3, (12, 8)).astype(np.int32), rng.integers(0, 32, 12).astype(np.int32), 2, 4)


@pytest.mark.parametrize("ranker_class", [DeepInterestNetwork, EmbeddingMLP])
def test_scoring_all_candidates_at_once_equals_scoring_each_alone(ranker_class):
    ranker = ranker_class(small_tables())
    sequence = tf.constant([[0, 0, 4, 5], [2, 3, 6, 7]])
    kinds = tf.constant([[0, 0, 1, 2], [3, 1, 1, 4]])
    candidates = tf.constant([[8, 9, 10], [11, 2, 4]])
    user, hour = tf.constant([[0.5, 0.1, 1.0], [1.0, -0.5, 0.0]]), tf.constant([3, 20])

    together, attention = ranker.score_candidates(sequence, kinds, candidates, user, hour)
    alone = [ranker.score_candidates(sequence, kinds, candidates[:, m : m + 1], user, hour)[0][:, 0] for m in range(3)]

    np.testing.assert_allclose(together.numpy(), tf.stack(alone, axis=1).numpy(), rtol=1e-5, atol=1e-6)
    if ranker_class is DeepInterestNetwork:
        assert attention.shape == (2, 3, 4)
        assert np.all(attention.numpy()[0, :, :2] == 0.0)  # padding gets no attention
    else:
        assert attention is None
