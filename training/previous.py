"""The previous design, kept to be measured against in every run: a two-tower model whose user
tower is the mean of the sequence, and a DIN ranker trained to tell whether a user will like
(rate >= the label threshold, click) an item shown to them, not what they take next. Trained on
the same split, and evaluated through the same pool rules as the served pipeline (Faiss top-M and
trending, the seen set left out)."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from schemas.events import EventType
from schemas.runtime.ann import ItemIndex
from schemas.runtime.model_inputs import (
    FIRST_ITEM,
    PADDING,
    Vocabulary,
    hour_of_day,
    sequence_arrays,
    user_feature_matrix,
)
from training.data import Row
from training.evaluate import Moments, pipeline_metrics
from training.fit import Schedule, fit
from training.layers import HOUR_DIM, AttentionPooling, AttentionUnit, BehaviourEmbedding, MaskedMeanPooling
from training.metrics import auc
from training.models import ItemTables

POSITIVE_TYPES = frozenset({EventType.CLICK, EventType.PURCHASE})
NEGATIVE_SAMPLING_EXPONENT = 0.75
WIDTH, DIM, TEMPERATURE, BATCH = 44, 32, 0.1, 512
ATTENTION_WIDTH = 36
EPOCHS = 2
"""Both models peaked within 2-3 epochs on ml-latest-small (the like-DIN keeps the better of its two)."""


def labels(rows: Sequence[Row], threshold: float) -> np.ndarray:
    """[N] float32: a rating >= threshold, a click or a purchase is 1; an impression is 1 only if a
    click with the same request_id and item_id was logged; anything else is 0."""
    clicked = {(row.event.request_id, row.event.item_id) for row in rows if row.event.type is EventType.CLICK}
    values = np.zeros(len(rows), dtype=np.float32)
    for n, row in enumerate(rows):
        kind = row.event.type
        if kind is EventType.RATING:
            values[n] = row.event.value >= threshold
        elif kind is EventType.IMPRESSION:
            values[n] = (row.event.request_id, row.event.item_id) in clicked
        else:
            values[n] = kind in POSITIVE_TYPES
    return values


def like_rows(rows: Sequence[Row], row_labels: np.ndarray, catalogue_ids: list[str], rng: np.random.Generator):
    """Impressions (labelled by clicks) and ratings; a click or purchase no logged impression
    explains is a positive paired with one negative item sampled by popularity ** 0.75."""
    shown = {(row.event.request_id, row.event.item_id) for row in rows if row.event.type is EventType.IMPRESSION}
    popularity = Counter(row.event.item_id for row, label in zip(rows, row_labels, strict=True) if label > 0)
    chosen, chosen_labels, unexplained = [], [], []
    for row, label in zip(rows, row_labels, strict=True):
        if row.event.type in (EventType.IMPRESSION, EventType.RATING):
            chosen.append(row)
            chosen_labels.append(label)
        elif (row.event.request_id, row.event.item_id) not in shown:
            unexplained.append(row)
    weights = np.array([popularity.get(item, 0) + 1.0 for item in catalogue_ids]) ** NEGATIVE_SAMPLING_EXPONENT
    negatives = rng.choice(len(catalogue_ids), size=len(unexplained), p=weights / weights.sum())
    for row, negative in zip(unexplained, negatives, strict=True):
        chosen += [row, row._replace(event=row.event._replace(item_id=catalogue_ids[negative]))]
        chosen_labels += [1.0, 0.0]
    return chosen, np.array(chosen_labels, dtype=np.float32)


def encode(rows: Sequence[Row], vocabulary: Vocabulary, length: int) -> dict[str, np.ndarray]:
    sequences = sequence_arrays(vocabulary, [row.sequence for row in rows], [row.event.ts for row in rows], length)
    return {
        "sequence": sequences.items,
        "kinds": sequences.kinds,
        "user_features": user_feature_matrix([row.features for row in rows]),
        "hour": hour_of_day(row.event.ts for row in rows),
        "item": vocabulary.item_indices(row.event.item_id for row in rows),
    }


def _tower(name: str) -> keras.Sequential:
    return keras.Sequential([keras.layers.Dense(64, activation="relu"), keras.layers.Dense(DIM)], name=name)


class MeanTwoTower(keras.Model):
    """Retrieval: user vector · item vector, both L2-normalised. The user tower is an MLP over the
    masked mean of the behaviours and the user features; the item tower one over the item embedding.
    In-batch softmax with logQ correction."""

    def __init__(self, tables: ItemTables, **kwargs):
        super().__init__(**kwargs)
        self.items = tables.embedding(WIDTH)
        self.behaviours = BehaviourEmbedding(self.items, name="behaviours")
        self.pool = MaskedMeanPooling()
        self.user_mlp, self.item_mlp = _tower("user_mlp"), _tower("item_mlp")

    def user_vectors(self, sequence, kinds, user_features):
        pooled = self.pool(self.behaviours(sequence, kinds), sequence > 0)
        return ops.normalize(self.user_mlp(ops.concatenate([pooled, user_features], axis=-1)), axis=-1)

    def item_vectors(self, items):
        return ops.normalize(self.item_mlp(self.items(items)), axis=-1)

    def call(self, inputs):
        return self.user_vectors(inputs["sequence"], inputs["kinds"], inputs["user_features"])

    def in_batch_loss(self, inputs, log_q):
        users, candidates = self.call(inputs), self.item_vectors(inputs["item"])
        items = inputs["item"]
        logits = ops.matmul(users, ops.transpose(candidates)) / TEMPERATURE - tf.gather(log_q, items)[None, :]
        same_item = ops.equal(items[:, None], items[None, :])
        logits = ops.where(same_item & ~ops.eye(ops.shape(items)[0], dtype="bool"), -1e9, logits)
        labels = ops.arange(ops.shape(items)[0])
        return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


class LikeDIN(keras.Model):
    """DIN over the behaviours with the candidate as query, the hour and the user features, trained
    with binary cross-entropy on like labels."""

    def __init__(self, tables: ItemTables, **kwargs):
        super().__init__(**kwargs)
        self.items = tables.embedding(WIDTH)
        self.behaviours = BehaviourEmbedding(self.items, name="behaviours")
        self.hours = keras.layers.Embedding(24, HOUR_DIM, name="hours")
        self.attention, self.pooling = AttentionUnit(ATTENTION_WIDTH, name="attention"), AttentionPooling()
        layers = []
        for n, width in enumerate((200, 80)):
            layers += [keras.layers.Dense(width), keras.layers.PReLU(shared_axes=[1], name=f"prelu_{n}")]
        self.mlp = keras.Sequential([*layers, keras.layers.Dense(1)], name="mlp")

    def score_candidates(self, sequence, kinds, candidates, user_features, hour, training=None):
        keys, query = self.behaviours(sequence, kinds), self.items(candidates)
        interest = self.pooling(self.attention(query, keys, sequence > 0, training=training), keys)
        context = ops.concatenate([user_features, self.hours(hour)], axis=-1)
        context = ops.broadcast_to(ops.expand_dims(context, 1), (*ops.shape(query)[:2], ops.shape(context)[-1]))
        return ops.squeeze(self.mlp(ops.concatenate([interest, query, interest * query, context], -1)), -1)

    def call(self, inputs, training=None):
        return self.score_candidates(
            inputs["sequence"],
            inputs["kinds"],
            inputs["item"][:, None],
            inputs["user_features"],
            inputs["hour"],
            training=training,
        )[:, 0]


def first_rows(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: array[:2] for name, array in inputs.items()}


@dataclass
class PreviousDesign:
    """The previous design's two models, trained on one split's rows."""

    retrieval: MeanTwoTower
    ranker: LikeDIN
    vocabulary: Vocabulary
    index: ItemIndex
    length: int

    @classmethod
    def train(
        cls,
        train: Sequence[Row],
        validation: Sequence[Row],
        vocabulary: Vocabulary,
        tables: ItemTables,
        length: int,
        threshold: float,
        seed: int,
        exact_max_items: int,
        progress,
    ):
        rng = np.random.default_rng(seed)
        train_labels = labels(train, threshold)
        positives = [row for row, label in zip(train, train_labels, strict=True) if label > 0]
        retrieval, ranker = MeanTwoTower(tables, name="previous_two_tower"), LikeDIN(tables, name="previous_din")
        retrieval_inputs = encode(positives, vocabulary, length)
        counts = np.bincount(retrieval_inputs["item"], minlength=vocabulary.size).astype(np.float64) + 1.0
        log_q = tf.constant(np.log(counts / counts.sum()), tf.float32)
        ids = list(vocabulary.item_ids)
        liked, liked_labels = like_rows(train, train_labels, ids, rng)
        ranker_inputs = encode(liked, vocabulary, length) | {"label": liked_labels}
        validation_liked, validation_labels = like_rows(validation, labels(validation, threshold), ids, rng)
        validation_inputs = encode(validation_liked, vocabulary, length)
        schedule = Schedule(BATCH, EPOCHS, 3e-3, 1, seed)
        # Every variable built first: `fit` builds Adam's slots for the variables that exist.
        retrieval.in_batch_loss(first_rows(retrieval_inputs), log_q)
        fit(
            retrieval,
            lambda batch: retrieval.in_batch_loss(batch, log_q),
            retrieval_inputs,
            schedule,
            lambda: 0.0,
            "previous design: two-tower",
            progress,
        )

        def like_loss(batch):
            logits = ranker(batch, training=True)
            return ops.mean(keras.losses.binary_crossentropy(batch["label"], logits, from_logits=True))

        def validation_auc() -> float:
            return auc(validation_labels, np.asarray(ranker(validation_inputs)))

        like_loss(first_rows(ranker_inputs))
        fit(
            ranker,
            like_loss,
            ranker_inputs,
            Schedule(BATCH, EPOCHS, 1e-3, 1, seed),
            validation_auc,
            "previous design: like-DIN",
            progress,
        )
        vectors = np.asarray(retrieval.item_vectors(np.arange(FIRST_ITEM, vocabulary.size)), np.float32)
        return cls(retrieval, ranker, vocabulary, ItemIndex(exact_max_items).index(vectors, ids), length)

    def metrics(self, moments: Moments, candidates: int, count: int) -> dict[str, float]:
        """Its pipeline: the two-tower's top `candidates` and trending, seen items left out, ranked by like-DIN."""
        lists = []
        user_vectors = tf.function(self.retrieval.user_vectors, reduce_retracing=True)
        score = tf.function(self.ranker.score_candidates, reduce_retracing=True)
        for start in range(0, len(moments.queries), 256):
            queries = moments.queries[start : start + 256]
            rows = [query.row for query in queries]
            inputs = encode(rows, self.vocabulary, self.length)
            vectors = np.asarray(user_vectors(inputs["sequence"], inputs["kinds"], inputs["user_features"]))
            _, neighbours = self.index.search(vectors, min(candidates, len(self.index)), [q.seen for q in queries])
            pools = []
            for query, row in zip(queries, neighbours, strict=True):
                found = [item for item in row if item is not None]
                trending = [item for item, _ in moments.trending[query.row.order] if item not in query.seen]
                pools.append(list(dict.fromkeys(found + trending)))
            width = max(map(len, pools))
            indices = np.full((len(pools), width), PADDING, np.int32)
            for n, pool in enumerate(pools):
                indices[n, : len(pool)] = self.vocabulary.item_indices(pool)
            scores = np.array(
                score(inputs["sequence"], inputs["kinds"], indices, inputs["user_features"], inputs["hour"])
            )
            scores[indices == PADDING] = -np.inf
            lists += [
                [pool[n] for n in np.argsort(-row_scores, kind="stable")[:count]]
                for pool, row_scores in zip(pools, scores, strict=True)
            ]
        return pipeline_metrics(lists, moments.queries)
