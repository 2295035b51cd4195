"""Small Keras layers the sequential retrieval model and the DIN ranker are built from.

Shapes: B batch, M candidates per row, L sequence length, D item-embedding width, H hidden units.
Item index 0 is padding (schemas.runtime.model_inputs.PADDING).
"""

import keras
import numpy as np
from keras import ops

from schemas.runtime.model_inputs import AGE_BUCKETS, BEHAVIOUR_KINDS, MAX_GENRES, YEAR_BUCKETS

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

    TABLES = ("genre_lookup", "year_lookup")
    """Its constant tables' weight names: built from the catalogue, never learnt."""

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
        # Initialised with the tables rather than assigned after: Keras may build a layer inside a
        # graph it then discards (a model's first call), where an assignment would be lost.
        self.genre_lookup = self.add_weight(
            shape=(self.vocabulary_size, MAX_GENRES),
            dtype="int32",
            initializer=keras.initializers.Constant(self.genre_table),
            trainable=False,
            name="genre_lookup",
        )
        self.year_lookup = self.add_weight(
            shape=(self.vocabulary_size,),
            dtype="int32",
            initializer=keras.initializers.Constant(self.year_table),
            trainable=False,
            name="year_lookup",
        )
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

    def __init__(self, hidden: int, **kwargs):
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
        return self.weights_of(self.hidden_terms(query, keys), mask, training)

    def hidden_terms(self, query, keys):
        """[B, M, D], [B, L, D] -> the first layer's pre-activations [B, M, L, H]."""
        key_terms = ops.matmul(keys, self.w_key)  # [B, L, H], once per sequence
        query_terms = ops.matmul(query, self.w_query)  # [B, M, H]
        batch, candidates, length = ops.shape(query)[0], ops.shape(query)[1], ops.shape(keys)[1]
        width = self.w_product.shape[0]
        per_key = ops.einsum("bld,dh->bdlh", keys, self.w_product)  # [B, D, L, H], once per sequence
        products = ops.matmul(query, ops.reshape(per_key, (batch, width, length * self.hidden)))
        products = ops.reshape(products, (batch, candidates, length, self.hidden))  # [B, M, L, H]
        return products + ops.expand_dims(query_terms, 2) + ops.expand_dims(key_terms, 1) + self.bias

    def weights_of(self, hidden, mask, training=None):
        """[B, M, L, H] pre-activations, mask [B, L] -> weights [B, M, L], 0 where masked."""
        weights = ops.squeeze(self.out(self.activation(hidden, training=training)), -1)
        return weights * ops.cast(ops.expand_dims(mask, 1), weights.dtype)


class AttentionPooling(keras.layers.Layer):
    """Weighted sum of behaviours per candidate, with DIN's unnormalised weights (no softmax, so the
    sum keeps the intensity of the user's interest). weights [B, M, L], keys [B, L, D] -> [B, M, D]."""

    def call(self, weights, keys):
        return ops.einsum("bml,bld->bmd", weights, keys)


def age_buckets(seconds):
    """[...] float seconds (negative counts as 0) -> [...] int32 bucket: round(log2(1 + seconds)), clipped."""
    buckets = ops.round(ops.log(1.0 + ops.maximum(seconds, 0.0)) / np.log(2.0))
    return ops.cast(ops.clip(buckets, 0, AGE_BUCKETS - 1), "int32")


class CausalSelfAttention(keras.layers.Layer):
    """One pre-norm Transformer block of the sequential user tower (SASRec, Kang & McAuley 2018):
    causal multi-head self-attention with a learnt bias per head for the time gap between each
    position's moment and each earlier behaviour (as in TiSASRec), then a position-wise feed-forward
    layer, each added back to its input. x [B, L, D], allowed [B, Q, L] bool (query may attend
    key), gaps [B, Q, L] int32 gap buckets -> [B, Q, D] for the last Q positions as queries (Q = L:
    every position; Q = 1: the newest only, all the user vector needs of the last block)."""

    def __init__(self, dim: int, heads: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.dim, self.heads = dim, heads
        self.norm_attention = keras.layers.LayerNormalization(epsilon=1e-6, name="norm_attention")
        self.norm_feed_forward = keras.layers.LayerNormalization(epsilon=1e-6, name="norm_feed_forward")
        self.query_key_value = keras.layers.Dense(3 * dim, name="query_key_value")
        self.project = keras.layers.Dense(dim, name="project")
        self.feed_forward = keras.layers.Dense(dim, activation="relu", name="feed_forward")
        self.feed_forward_out = keras.layers.Dense(dim, name="feed_forward_out")
        self.gap_bias = keras.layers.Embedding(AGE_BUCKETS, heads, embeddings_initializer="zeros", name="gap_bias")
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, x_shape, allowed_shape=None, gaps_shape=None):
        for layer, width in ((self.norm_attention, self.dim), (self.norm_feed_forward, self.dim),
                             (self.query_key_value, self.dim), (self.project, self.dim),
                             (self.feed_forward, self.dim), (self.feed_forward_out, self.dim)):  # fmt: skip
            layer.build((None, None, width))
        self.gap_bias.build((None, None, None))

    def call(self, x, allowed, gaps, training=None):
        batch, queries = ops.shape(x)[0], ops.shape(allowed)[1]
        width = self.dim // self.heads

        def heads(t):  # [B, n, D] -> [B, heads, n, D / heads]
            return ops.transpose(ops.reshape(t, (batch, ops.shape(t)[1], self.heads, width)), (0, 2, 1, 3))

        query, key, value = (heads(t) for t in ops.split(self.query_key_value(self.norm_attention(x)), 3, axis=-1))
        query = query[:, :, -queries:]
        logits = ops.einsum("bhqd,bhkd->bhqk", query, key) / np.sqrt(width)
        logits = logits + ops.transpose(self.gap_bias(gaps), (0, 3, 1, 2))
        weights = ops.softmax(ops.where(allowed[:, None], logits, -1e9), axis=-1)
        attended = ops.einsum("bhqk,bhkd->bhqd", self.dropout(weights, training=training), value)
        attended = ops.reshape(ops.transpose(attended, (0, 2, 1, 3)), (batch, queries, self.dim))
        x = x[:, -queries:] + self.dropout(self.project(attended), training=training)
        hidden = self.dropout(self.feed_forward(self.norm_feed_forward(x)), training=training)
        return x + self.dropout(self.feed_forward_out(hidden), training=training)


class PairAttentionUnit(AttentionUnit):
    """DIN's activation unit that also reads a number per (candidate, behaviour) pair, here how often
    the candidate followed that behaviour in other users' sequences: its first layer gains the term
    pair·w_pair. query [B, M, D], keys [B, L, D], mask [B, L], pairs [B, M, L] -> weights [B, M, L]."""

    def build(self, query_shape, keys_shape=None, mask_shape=None, pairs_shape=None):
        super().build(query_shape)
        self.w_pair = self.add_weight(shape=(self.hidden,), initializer="glorot_uniform", name="w_pair")

    def call(self, query, keys, mask, pairs, training=None):
        return self.weights_of(self.hidden_terms(query, keys) + ops.expand_dims(pairs, -1) * self.w_pair, mask,
                               training)  # fmt: skip


class Standardise(keras.layers.Layer):
    """(x - mean) / std per feature, with mean and std fixed from the training data by `fit`
    (kept as weights, so they travel with the model): x [..., F] -> [..., F]."""

    def build(self, input_shape):
        width = input_shape[-1]
        self.mean = self.add_weight(shape=(width,), initializer="zeros", trainable=False, name="mean")
        self.std = self.add_weight(shape=(width,), initializer="ones", trainable=False, name="std")

    def fit(self, features: np.ndarray) -> None:
        """features [N, F] (any leading shape): set mean and std from them (std 1 where constant)."""
        flat = np.asarray(features, np.float64).reshape(-1, features.shape[-1])
        if not self.built:
            self.build(flat.shape)
        std = flat.std(axis=0)
        self.mean.assign(flat.mean(axis=0).astype(np.float32))
        self.std.assign(np.where(std > 1e-6, std, 1.0).astype(np.float32))

    def call(self, x):
        return (x - self.mean) / self.std
