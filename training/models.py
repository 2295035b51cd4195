"""The models: a two-tower retrieval model and two rankers (DIN, and the Embedding+MLP baseline).

Inputs are the arrays of schemas.model_inputs: sequence [B, L] item indices (0 pads) with their
behaviour kinds [B, L], user features [B, F], hour [B], candidate item indices [B, M].
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from training.layers import (
    HOUR_DIM,
    AttentionPooling,
    AttentionUnit,
    BehaviourEmbedding,
    ItemEmbedding,
    MaskedMeanPooling,
)


class ItemTables:
    """What every model needs to embed items: the catalogue's constant tables and the id width."""

    def __init__(self, genre_table: np.ndarray, year_table: np.ndarray, genre_count: int, id_dim: int):
        self.genre_table, self.year_table, self.genre_count, self.id_dim = genre_table, year_table, genre_count, id_dim

    def embedding(self) -> ItemEmbedding:
        return ItemEmbedding(self.genre_table, self.year_table, self.genre_count, self.id_dim, name="item_embedding")


def _mlp(units: tuple[int, ...], activation, name: str) -> keras.Sequential:
    layers = []
    for n, width in enumerate(units):
        layers += [keras.layers.Dense(width, name=f"dense_{n}"), activation(f"activation_{n}")]
    return keras.Sequential(layers, name=name)


def _tower(dim: int, name: str) -> keras.Sequential:
    return keras.Sequential(
        [keras.layers.Dense(64, activation="relu", name="hidden"), keras.layers.Dense(dim, name="out")], name=name
    )


class TwoTower(keras.Model):
    """Retrieval: user vector · item vector, both L2-normalised to `dim`. The user tower reads the
    behaviour sequence (masked mean of item embeddings) and the user features, so it runs on the live
    sequence at request time; the item tower reads item id, genres and year. Both share the item embedding."""

    def __init__(self, tables: ItemTables, dim: int, temperature: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.items = tables.embedding()
        self.behaviours = BehaviourEmbedding(self.items, name="behaviours")
        self.pool = MaskedMeanPooling()
        self.user_mlp, self.item_mlp = _tower(dim, "user_mlp"), _tower(dim, "item_mlp")
        self.temperature = temperature

    def user_vectors(self, sequence, kinds, user_features):
        """[B, L], [B, L], [B, F] -> [B, dim]."""
        pooled = self.pool(self.behaviours(sequence, kinds), sequence > 0)
        return ops.normalize(self.user_mlp(ops.concatenate([pooled, user_features], axis=-1)), axis=-1)

    def item_vectors(self, items):
        """[N] -> [N, dim]."""
        return ops.normalize(self.item_mlp(self.items(items)), axis=-1)

    def call(self, inputs):
        """-> (user vectors [B, dim], vectors of the rows' items [B, dim])."""
        users = self.user_vectors(inputs["sequence"], inputs["kinds"], inputs["user_features"])
        return users, self.item_vectors(inputs["item"])

    def in_batch_loss(self, sequence, kinds, user_features, items, log_q, logq_weight: float):
        """Softmax over the batch's items as negatives, each logit corrected by its item's log sampling
        probability (logQ), so popular items are not pushed down just for being frequent negatives.
        Another row holding the same item is not a negative."""
        users, candidates = self.user_vectors(sequence, kinds, user_features), self.item_vectors(items)
        logits = ops.matmul(users, ops.transpose(candidates)) / self.temperature - logq_weight * log_q[None, :]
        same_item = ops.equal(items[:, None], items[None, :])
        logits = ops.where(same_item & ~ops.eye(ops.shape(items)[0], dtype="bool"), -1e9, logits)
        labels = ops.arange(ops.shape(items)[0])
        return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


class Ranker(keras.Model):
    """Click/like probability of candidates for a user: an MLP over the user's interest, the
    candidate, the user features and the hour. Subclasses say how the interest is pooled."""

    def __init__(self, tables: ItemTables, hidden: tuple[int, ...] = (200, 80), **kwargs):
        super().__init__(**kwargs)
        self.items = tables.embedding()
        self.behaviours = BehaviourEmbedding(self.items, name="behaviours")
        self.hours = keras.layers.Embedding(24, HOUR_DIM, name="hours")
        self.mlp = _mlp(hidden, self.activation, "mlp")
        self.logit = keras.layers.Dense(1, name="logit")

    def activation(self, name: str) -> keras.layers.Layer:
        return keras.layers.PReLU(name=name)

    def interest(self, query, keys, mask, training=None):
        """-> (interest [B, M, D], attention weights [B, M, L] or None)."""
        raise NotImplementedError

    def score_candidates(self, sequence, kinds, candidates, user_features, hour, training=None):
        """[B, L], [B, L], [B, M], [B, F], [B] -> (logits [B, M], attention [B, M, L] or None)."""
        keys, query = self.behaviours(sequence, kinds), self.items(candidates)
        interest, attention = self.interest(query, keys, sequence > 0, training=training)
        context = ops.concatenate([user_features, self.hours(hour)], axis=-1)
        context = ops.broadcast_to(ops.expand_dims(context, 1), (*ops.shape(query)[:2], ops.shape(context)[-1]))
        features = ops.concatenate([interest, query, interest * query, context], axis=-1)
        logits = ops.squeeze(self.logit(self.mlp(features, training=training)), -1)
        return logits, attention

    def call(self, inputs, training=None):
        """One candidate per row: inputs sequence, kinds, item [B], user_features, hour -> logits [B]."""
        logits, _ = self.score_candidates(
            inputs["sequence"],
            inputs["kinds"],
            inputs["item"][:, None],
            inputs["user_features"],
            inputs["hour"],
            training=training,
        )
        return logits[:, 0]


class DeepInterestNetwork(Ranker):
    """DIN (Zhou et al., 2018): the interest is the behaviour sequence weighted by each behaviour's
    relevance to the candidate (AttentionUnit, with Dice), so it differs per candidate. The MLP above is
    the baseline's (PReLU): on ml-latest-small its validation GAUC was no better with Dice there, and the
    comparison with the baseline then isolates the attention."""

    def __init__(self, tables: ItemTables, **kwargs):
        super().__init__(tables, **kwargs)
        self.attention = AttentionUnit(name="attention")
        self.pooling = AttentionPooling()

    def interest(self, query, keys, mask, training=None):
        weights = self.attention(query, keys, mask, training=training)
        return self.pooling(weights, keys), weights


class EmbeddingMLP(Ranker):
    """Baseline: the same MLP over the plain mean of the behaviour embeddings (one interest for all candidates)."""

    def __init__(self, tables: ItemTables, **kwargs):
        super().__init__(tables, **kwargs)
        self.pool = MaskedMeanPooling()

    def interest(self, query, keys, mask, training=None):
        pooled = ops.expand_dims(self.pool(keys, mask), 1)
        return ops.broadcast_to(pooled, ops.shape(query)), None


def ranking_loss(model: Ranker, inputs: dict, labels: tf.Tensor) -> tf.Tensor:
    logits = model(inputs, training=True)
    return ops.mean(keras.losses.binary_crossentropy(labels, logits, from_logits=True))
