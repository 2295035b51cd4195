"""The models: sequential retrieval (a SASRec user tower over the live sequence, item vectors from
id and content) and two rankers trained on the candidates that retrieval produces: DIN, and the
Embedding+MLP baseline.

Inputs are the arrays of `schemas.runtime.model_inputs`: items [B, L] item indices (0 pads) with their
behaviour kinds [B, L] and ages [B, L] (seconds before the request), candidates [B, M], candidate
features [B, M, F] (RANKER_FEATURES) and co-visitation pairs [B, M, N] of the ranker's newest N behaviours.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from schemas.hyperparameters import Hyperparameters
from schemas.runtime.model_inputs import BEHAVIOUR_KINDS, FIRST_ITEM
from training.layers import (
    AGE_BUCKETS,
    GENRE_DIM,
    YEAR_DIM,
    AttentionPooling,
    CausalSelfAttention,
    ItemEmbedding,
    MaskedMeanPooling,
    PairAttentionUnit,
    Standardise,
    age_buckets,
)


class ItemTables:
    """What every model needs to embed items: the catalogue's constant tables."""

    def __init__(self, genre_table: np.ndarray, year_table: np.ndarray, genre_count: int):
        self.genre_table, self.year_table, self.genre_count = genre_table, year_table, genre_count

    def embedding(self, width: int) -> ItemEmbedding:
        """Items as `width` numbers: an id embedding and the item's content (genres, year)."""
        return ItemEmbedding(
            self.genre_table, self.year_table, self.genre_count, width - GENRE_DIM - YEAR_DIM, name="item_embedding"
        )


def continue_from(model: keras.Model, trained: keras.Model, trained_items: int) -> None:
    """Give `model` the weights of `trained`, a built model of the same design whose item tables had
    `trained_items` rows (`model`'s may have more: items added since, after the trained ones). Rows
    of added items keep `model`'s fresh initial values; the item tables stay `model`'s, built from
    today's catalogue."""
    for target, source in zip(model.weights, trained.weights, strict=True):
        if target.name in ItemEmbedding.TABLES:
            continue
        value = source.numpy()
        if tuple(target.shape) != value.shape:
            grown = value.shape[0] == trained_items and tuple(target.shape[1:]) == value.shape[1:]
            if not grown or target.shape[0] < trained_items:
                raise ValueError(f"{target.path}: {value.shape} does not continue into {tuple(target.shape)}")
            value = np.concatenate([value, target.numpy()[trained_items:]])
        target.assign(value)


def moments(ages):
    """[B, L] ages -> [B, L] the age of each position's moment: the next behaviour's age, and 0 (the
    request) after the newest. Position i predicts what comes at its moment."""
    return ops.concatenate([ages[:, 1:], ops.zeros_like(ages[:, :1])], axis=1)


class SequentialRetrieval(keras.Model):
    """Retrieval: user vector · item vector. The user tower reads the live sequence in order: each
    behaviour is its item's vector plus an embedding of what the user did with it (clicked, rated
    4.5, ...) and of its position; causal self-attention blocks with time-gap biases turn position i
    into the user's state just after behaviour i, as of the moment of the next one, and the last
    position is the user vector. The item tower is the item embedding of id, genres and year, shared
    with the sequence's input, so an item without interactions still has a vector from its content."""

    def __init__(
        self, tables: ItemTables, dim: int, length: int, blocks: int = 2, heads: int = 2, dropout: float = 0.2, **kwargs
    ):
        super().__init__(**kwargs)
        self.dim, self.length = dim, length
        self.items = tables.embedding(dim)
        self.kinds = keras.layers.Embedding(BEHAVIOUR_KINDS, dim, name="kinds")
        self.positions = keras.layers.Embedding(length, dim, name="positions")
        self.blocks = [CausalSelfAttention(dim, heads, dropout, name=f"block_{n}") for n in range(blocks)]
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6, name="norm")
        self.dropout = keras.layers.Dropout(dropout)

    def encode(self, items, kinds, ages, training=None, newest_only=False):
        """[B, L] each -> [B, L, dim]: the user's state after each behaviour ([B, 1, dim] after the
        newest only, with `newest_only`: the last block then computes that position alone)."""
        present = items > 0
        x = self.items(items) * np.sqrt(self.dim) + self.kinds(kinds) + self.positions(ops.arange(self.length))[None]
        x = self.dropout(x, training=training) * ops.cast(present[..., None], x.dtype)
        gaps = age_buckets(ages[:, None, :] - moments(ages)[:, :, None])  # [B, query L, key L]
        allowed = ops.tril(ops.ones((self.length, self.length), "bool"))[None] & present[:, None, :]
        for n, block in enumerate(self.blocks):
            queries = 1 if newest_only and n == len(self.blocks) - 1 else self.length
            shown = ops.cast(present[:, -queries:, None], x.dtype)
            x = block(x, allowed[:, -queries:], gaps[:, -queries:], training=training) * shown
        return self.norm(x)

    # Traced once per model: every recommender over it (one per validation epoch) calls the same graph.
    @tf.function(reduce_retracing=True, autograph=False)
    def user_vectors(self, items, kinds, ages):
        """[B, L] each -> [B, dim]: the state after the newest behaviour, `encode`'s last position."""
        return self.encode(items, kinds, ages, training=False, newest_only=True)[:, -1]

    def item_vectors(self, indices):
        """[N] item indices -> [N, dim]."""
        return self.items(indices)

    def next_item_loss(self, items, kinds, ages, targets, training=True):
        """Softmax over the whole catalogue at every position whose target (the next item, 0: none) is set."""
        states = self.encode(items, kinds, ages, training=training)
        catalogue = self.item_vectors(ops.arange(self.items.vocabulary_size))
        flat = ops.reshape(states, (-1, self.dim))
        logits = ops.matmul(flat, ops.transpose(catalogue))  # [B * L, items]
        reserved = ops.arange(self.items.vocabulary_size) < FIRST_ITEM
        logits = ops.where(reserved[None, :], -1e9, logits)
        chosen = ops.reshape(targets, (-1,))
        losses = keras.losses.sparse_categorical_crossentropy(chosen, logits, from_logits=True)
        labelled = ops.cast(chosen > 0, losses.dtype)
        return ops.sum(losses * labelled) / ops.maximum(ops.sum(labelled), 1.0)

    def call(self, inputs, training=None):
        return self.encode(inputs["items"], inputs["kinds"], inputs["ages"], training=training)


def _mlp(units: tuple[int, ...], name: str) -> keras.Sequential:
    layers = []
    for n, width in enumerate(units):
        layers += [keras.layers.Dense(width, name=f"dense_{n}"), keras.layers.PReLU(shared_axes=[1], name=f"prelu_{n}")]
    return keras.Sequential(layers, name=name)


def served_score(next_logits, like_logits, like_weight: float):
    """next + like_weight · log sigmoid(like): log P(next) · P(like)^like_weight, up to a constant per request."""
    return next_logits + like_weight * ops.log_sigmoid(like_logits)


class Ranker(keras.Model):
    """Scores the candidates of a request, trained on the candidates retrieval gives: `next` logits
    (which candidate the user takes next, a softmax over them) and `like` logits (whether the user
    likes it, rating >= the label threshold, where the events carry a rating). The served score is
    next + like_weight · log sigmoid(like), the log of P(next) · P(like)^like_weight up to a constant
    per request. An MLP reads the user's interest for the candidate, the candidate, their product and
    the candidate's features; subclasses say how the interest is pooled from the user's newest
    `behaviours` behaviours (the whole sequence is the user tower's: the ranker's work grows with
    every behaviour it reads, for every candidate)."""

    def __init__(
        self,
        tables: ItemTables,
        width: int,
        like_weight: float,
        behaviours: int,
        hidden: tuple[int, ...] = (128, 64),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.like_weight, self.behaviours = like_weight, behaviours
        self.items = tables.embedding(width)
        self.kinds = keras.layers.Embedding(BEHAVIOUR_KINDS, width, name="kinds")
        self.ages = keras.layers.Embedding(AGE_BUCKETS, width, name="ages")
        self.standardise = Standardise(name="standardise")
        """Fitted to the training rows' candidate features before training."""
        self.mlp = _mlp(hidden, "mlp")
        self.next_logit = keras.layers.Dense(1, name="next_logit")
        self.like_logit = keras.layers.Dense(1, name="like_logit")

    @classmethod
    def of(cls, tables: ItemTables, spec: Hyperparameters, name: str) -> "Ranker":
        """The ranker `spec` describes."""
        return cls(tables, spec.ranker_width, spec.like_weight, spec.ranker_behaviours, name=name)

    def interest(self, query, keys, mask, pairs, training=None):
        """-> (interest [B, M, D], attention weights [B, M, L] or None)."""
        raise NotImplementedError

    def score_candidates(self, items, kinds, ages, candidates, features, pairs, training=None):
        """Sequences [B, L], pairs [B, M, N] of the newest N = min(behaviours, L) ->
        (next logits [B, M], like logits [B, M], attention [B, M, N] or None)."""
        items, kinds, ages = (array[:, -self.behaviours :] for array in (items, kinds, ages))
        keys = self.items(items) + self.kinds(kinds) + self.ages(age_buckets(ages))
        query = self.items(candidates)
        interest, attention = self.interest(query, keys, items > 0, pairs, training=training)
        inputs = ops.concatenate([interest, query, interest * query, self.standardise(features)], axis=-1)
        hidden = self.mlp(inputs, training=training)
        return ops.squeeze(self.next_logit(hidden), -1), ops.squeeze(self.like_logit(hidden), -1), attention

    @tf.function(reduce_retracing=True, autograph=False)
    def inference_logits(self, items, kinds, ages, candidates, features, pairs):
        """`score_candidates` at inference, traced once per model: every like weight served from it
        and every recommender over it call the same graph."""
        return self.score_candidates(items, kinds, ages, candidates, features, pairs)

    def served_scores(self, items, kinds, ages, candidates, features, pairs):
        """-> (scores [B, M], attention [B, M, L] or None): what the service ranks by."""
        next_logits, like_logits, attention = self.inference_logits(items, kinds, ages, candidates, features, pairs)
        return served_score(next_logits, like_logits, self.like_weight), attention

    def call(self, inputs, training=None):
        return self.score_candidates(
            inputs["items"],
            inputs["kinds"],
            inputs["ages"],
            inputs["candidates"],
            inputs["features"],
            inputs["pairs"],
            training=training,
        )


class LikeReweighted:
    """A trained ranker served with another like weight. The weight enters only the served score,
    so the like-weight curve measures each weight on the same trained model, retraining nothing."""

    def __init__(self, ranker: Ranker, like_weight: float):
        self.ranker, self.like_weight, self.behaviours = ranker, like_weight, ranker.behaviours

    def served_scores(self, items, kinds, ages, candidates, features, pairs):
        """-> (scores [B, M], attention [B, M, L] or None), as `Ranker.served_scores`."""
        next_logits, like_logits, attention = self.ranker.inference_logits(
            items, kinds, ages, candidates, features, pairs
        )
        return served_score(next_logits, like_logits, self.like_weight), attention


class DeepInterestNetwork(Ranker):
    """DIN (Zhou et al., 2018): the interest is the behaviour sequence weighted by each behaviour's
    relevance to the candidate, so it differs per candidate, and so do the reasons. The activation
    unit reads the candidate, the behaviour (item, what the user did, how long ago) and how often the
    candidate followed that behaviour in other users' sequences; the weights stay unnormalised, as in
    the paper, so the sum keeps the intensity of the interest."""

    def __init__(
        self, tables: ItemTables, width: int, like_weight: float, behaviours: int, attention_width: int, **kwargs
    ):
        super().__init__(tables, width, like_weight, behaviours, **kwargs)
        self.attention = PairAttentionUnit(attention_width, name="attention")
        self.pooling = AttentionPooling()

    @classmethod
    def of(cls, tables: ItemTables, spec: Hyperparameters, name: str) -> "DeepInterestNetwork":
        return cls(tables, spec.ranker_width, spec.like_weight, spec.ranker_behaviours, spec.ranker_attention_width,
                   name=name)  # fmt: skip

    def interest(self, query, keys, mask, pairs, training=None):
        weights = self.attention(query, keys, mask, pairs, training=training)
        return self.pooling(weights, keys), weights


class EmbeddingMLP(Ranker):
    """Baseline: the same model and objective with the plain mean of the behaviours, one interest for
    all candidates."""

    def __init__(self, tables: ItemTables, width: int, like_weight: float, behaviours: int, **kwargs):
        super().__init__(tables, width, like_weight, behaviours, **kwargs)
        self.pool = MaskedMeanPooling()

    def interest(self, query, keys, mask, pairs, training=None):
        pooled = ops.expand_dims(self.pool(keys, mask), 1)
        return ops.broadcast_to(pooled, ops.shape(query)), None


def ranking_loss(model: Ranker, inputs: dict, liked, rated):
    """Each row's candidates hold the real next item first: softmax cross-entropy of the next logits
    over them, plus the like logit's binary cross-entropy on that item where it was rated.
    liked, rated: [B] float32 (1: liked; 1: has a like label)."""
    next_logits, like_logits, _ = model(inputs, training=True)
    chosen = keras.losses.sparse_categorical_crossentropy(ops.zeros_like(liked, "int32"), next_logits, from_logits=True)
    like = keras.losses.binary_crossentropy(liked[:, None], like_logits[:, :1], from_logits=True)
    return ops.mean(chosen) + ops.sum(like * rated) / ops.maximum(ops.sum(rated), 1.0)
