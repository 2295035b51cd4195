"""Exported serving signatures (TensorFlow SavedModels, no Python code needed to load them).

user_tower.embed(sequence [B, L] int32, user_features [B, F] float32) -> {"embedding": [B, d]}
ranker.score(sequence [B, L] int32, candidates [B, M] int32, user_features [B, F] float32, hour [B] int32)
    -> {"score": [B, M] probability, "attention": [B, M, L] DIN weights over the sequence}
"""

from pathlib import Path

import keras
import tensorflow as tf

from schemas.model_inputs import USER_FEATURES
from training.models import Ranker, TwoTower


def _spec(shape, dtype, name):
    return tf.TensorSpec(shape, dtype, name=name)


def export_user_tower(model: TwoTower, path: Path, length: int) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "embed",
        lambda sequence, kinds, user_features: {"embedding": model.user_vectors(sequence, kinds, user_features)},
        input_signature=[
            _spec([None, length], tf.int32, "sequence"),
            _spec([None, length], tf.int32, "kinds"),
            _spec([None, len(USER_FEATURES)], tf.float32, "user_features"),
        ],
    )
    archive.write_out(str(path), verbose=False)


def export_ranker(model: Ranker, path: Path, length: int) -> None:
    def score(sequence, kinds, candidates, user_features, hour):
        logits, attention = model.score_candidates(sequence, kinds, candidates, user_features, hour, training=False)
        if attention is None:
            attention = tf.zeros(tf.concat([tf.shape(candidates), [length]], 0))
        return {"score": tf.sigmoid(logits), "attention": attention}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "score",
        score,
        input_signature=[
            _spec([None, length], tf.int32, "sequence"),
            _spec([None, length], tf.int32, "kinds"),
            _spec([None, None], tf.int32, "candidates"),
            _spec([None, len(USER_FEATURES)], tf.float32, "user_features"),
            _spec([None], tf.int32, "hour"),
        ],
    )
    archive.write_out(str(path), verbose=False)
