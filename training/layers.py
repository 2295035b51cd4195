"""Small Keras layers the retrieval model and the DIN ranker are built from.

Shapes: B batch, M candidates per row, L sequence length, D item-embedding width, H hidden units.
Item index 0 is padding (schemas.model_inputs.PADDING).
"""

import keras
import numpy as np
from keras import ops

from schemas.model_inputs import BEHAVIOUR_KINDS, MAX_GENRES, YEAR_BUCKETS

GENRE_DIM, YEAR_DIM, HOUR_DIM = 8, 4, 4


class Dice(keras.layers.Layer):
    """Data-adaptive activation of the DIN paper: p(s)·s + (1 - p(s))·alpha·s with
    p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + ε)); E and Var are the batch's in training and
    moving averages at inference (a batch normalisation without scale or shift). alpha is learnt per unit."""

    def __init__(self, epsilon: float = 1e-8, momentum: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        self.normalise = keras.layers.BatchNormalization(
            axis=-1, center=False, scale=False, epsilon=epsilon, momentum=momentum, name="normalise"
        )

    def build(self, input_shape):
        self.alpha = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="alpha")
        self.normalise.build(input_shape)

    def call(self, inputs, training=None):
        p = ops.sigmoid(self.normalise(inputs, training=training))
        return p * inputs + (1.0 - p) * self.alpha * inputs


class ItemEmbedding(keras.layers.Layer):
    """Item index [...] -> [..., D]: its id embedding, the mean of its genres' embeddings and its
    year bucket's embedding, D = id_dim + GENRE_DIM + YEAR_DIM. The genres and years of all items are
    constant tables inside the layer, so the models take item indices only."""

    def __init__(self, genre_table: np.ndarray, year_table: np.ndarray, genre_count: int, id_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = len(year_table)
        self.genre_table = genre_table
        self.year_table = year_table
        self.ids = keras.layers.Embedding(self.vocabulary_size, id_dim, name="ids")
        self.genres = keras.layers.Embedding(genre_count + 1, GENRE_DIM, name="genres")
        self.years = keras.layers.Embedding(YEAR_BUCKETS, YEAR_DIM, name="years")
        self.output_dim = id_dim + GENRE_DIM + YEAR_DIM

    def build(self, input_shape):
        self.genre_lookup = self.add_weight(
            shape=(self.vocabulary_size, MAX_GENRES),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="genre_lookup",
        )
        self.year_lookup = self.add_weight(
            shape=(self.vocabulary_size,), dtype="int32", initializer="zeros", trainable=False, name="year_lookup"
        )
        self.genre_lookup.assign(self.genre_table)
        self.year_lookup.assign(self.year_table)
        for embedding in (self.ids, self.genres, self.years):
            embedding.build(input_shape)

    def call(self, indices):
        genre_ids = ops.take(self.genre_lookup, indices, axis=0)
        genre_mask = ops.cast(ops.expand_dims(genre_ids > 0, -1), "float32")
        genre_sum = ops.sum(self.genres(genre_ids) * genre_mask, axis=-2)
        genre_mean = genre_sum / ops.maximum(ops.sum(genre_mask, axis=-2), 1.0)
        years = self.years(ops.take(self.year_lookup, indices, axis=0))
        return ops.concatenate([self.ids(indices), genre_mean, years], axis=-1)


class BehaviourEmbedding(keras.layers.Layer):
    """(item indices [B, L], behaviour kinds [B, L]) -> [B, L, D]: the item's embedding plus an embedding
    of what the user did with it (clicked, rated 4.5, ...), so a sequence says what was liked."""

    def __init__(self, items: ItemEmbedding, **kwargs):
        super().__init__(**kwargs)
        self.items = items
        self.kinds = keras.layers.Embedding(BEHAVIOUR_KINDS, items.output_dim, name="kinds")

    def call(self, indices, kinds):
        return self.items(indices) + self.kinds(kinds)


class MaskedMeanPooling(keras.layers.Layer):
    """([B, L, D] values, [B, L] mask) -> [B, D]: the mean over unmasked positions (zeros if none)."""

    def call(self, values, mask):
        weights = ops.cast(ops.expand_dims(mask, -1), values.dtype)
        return ops.sum(values * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)


class AttentionUnit(keras.layers.Layer):
    """DIN's local activation unit: for each candidate (query) and behaviour (key), an MLP over
    [q, k, q - k, q ⊙ k] gives the weight of that behaviour.

    The first dense layer over that concatenation equals q·W_q + k·W_k + (q ⊙ k)·W_p + b (the
    q - k block folds into W_q and W_k), so the key term k·W_k is computed once per sequence and
    shared by all M candidates of a request instead of being recomputed per candidate. Likewise
    (q ⊙ k)·W_p = q·(k ⊙ W_p): the per-behaviour matrices k ⊙ W_p are built once per sequence and
    all M·L pair terms come out of one matrix product (a third faster than forming every q ⊙ k).
    query [B, M, D], keys [B, L, D], mask [B, L] -> weights [B, M, L], 0 where masked.
    """

    def __init__(self, hidden: int = 36, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.activation = Dice(name="dice")
        self.out = keras.layers.Dense(1, name="weight")

    def build(self, query_shape, keys_shape=None, mask_shape=None):
        width = query_shape[-1]
        self.w_query = self.add_weight(shape=(width, self.hidden), initializer="glorot_uniform", name="w_query")
        self.w_key = self.add_weight(shape=(width, self.hidden), initializer="glorot_uniform", name="w_key")
        self.w_product = self.add_weight(shape=(width, self.hidden), initializer="glorot_uniform", name="w_product")
        self.bias = self.add_weight(shape=(self.hidden,), initializer="zeros", name="bias")
        self.activation.build((None, None, None, self.hidden))
        self.out.build((None, None, None, self.hidden))

    def call(self, query, keys, mask, training=None):
        key_terms = ops.matmul(keys, self.w_key)  # [B, L, H], once per sequence
        query_terms = ops.matmul(query, self.w_query)  # [B, M, H]
        batch, candidates, length = ops.shape(query)[0], ops.shape(query)[1], ops.shape(keys)[1]
        width = self.w_product.shape[0]
        per_key = ops.einsum("bld,dh->bdlh", keys, self.w_product)  # [B, D, L, H], once per sequence
        products = ops.matmul(query, ops.reshape(per_key, (batch, width, length * self.hidden)))
        products = ops.reshape(products, (batch, candidates, length, self.hidden))  # [B, M, L, H]
        hidden = products + ops.expand_dims(query_terms, 2) + ops.expand_dims(key_terms, 1) + self.bias
        weights = ops.squeeze(self.out(self.activation(hidden, training=training)), -1)  # [B, M, L]
        return weights * ops.cast(ops.expand_dims(mask, 1), weights.dtype)


class AttentionPooling(keras.layers.Layer):
    """Weighted sum of behaviours per candidate, with DIN's unnormalised weights (no softmax, so the
    sum keeps the intensity of the user's interest). weights [B, M, L], keys [B, L, D] -> [B, M, D]."""

    def call(self, weights, keys):
        return ops.einsum("bml,bld->bmd", weights, keys)
